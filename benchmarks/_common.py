"""Shared set-up for the benchmark scripts: models built from configs, synthetic data, the machine."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


#: CLIP ViT-B/32-like: 12 blocks of width 768 with 12 heads, 32px patches on 224px images, 512-d
#: projection. (Both towers share the width here; the real text tower is 512 wide.)
B32 = dict(hidden_size=768, layers=12, heads=12, image_size=224, patch_size=32, projection_dim=512,
           max_text_len=32)


def machine() -> str:
    from modaltune.machine import describe, machine_facts

    return describe(machine_facts())


def build_model(root: Path, captions: list[str], **dims) -> Path:
    from modaltune.testing.synthetic import vocabulary_texts
    from modaltune.testing.tiny_clip import build_clip

    out = root / "model"
    if not (out / "config.json").exists():
        build_clip(out, texts=vocabulary_texts() + captions, seed=0, vocab_size=400, **dims)
    return out


def caption_data(root: Path, n: int, image_size: int) -> Path:
    from modaltune.testing.synthetic import write_caption_corpus

    manifest = root / "captions" / "captions.jsonl"
    if not manifest.exists():
        write_caption_corpus(root / "captions", n, seed=0, image_size=image_size, styles=("plain",))
    return manifest


def class_data(root: Path, per_class: dict[str, int], image_size: int) -> Path:
    from modaltune.testing.synthetic import write_classification_folder

    out = root / "shapes"
    if not out.exists():
        write_classification_folder(out, classes=("circle", "square", "triangle", "star"), attribute="shape",
                                    per_class=per_class, seed=0, image_size=image_size)
    return out


def captions_of(manifest: Path) -> list[str]:
    return [json.loads(line)["text"] for line in manifest.read_text().splitlines() if line.strip()]


@contextmanager
def timer(out: dict, key: str):
    tick = time.perf_counter()
    yield
    out[key] = time.perf_counter() - tick


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: on Linux that survives
    fork + exec, so a child would report its parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


#: CLAP with HTSAT-tiny's audio-tower layout at half width (the ``laion/clap-htsat-*`` layout: 4
#: Swin stages of depths 2/2/6/2 with 4px patches; here 48 → 384 wide with 2/4/8/16 heads, the real
#: one 96 → 768) on a 128 × 128 mel image (32 mel bins; the real 64 bins and 256; window 4 instead
#: of 8 so the last 4 × 4 stage still holds a window), 512-d projection. Sized so that an uncached
#: epoch stays well under a minute on a loaded 2-core CPU (full width took 9 s per
#: 16-clip forward). The text tower (only the class prompts go through it): a 4-layer, 256-wide RoBERTa.
HTSAT_TINY = dict(mel_bins=32, spec_size=128, window_size=4, depths=(2, 2, 6, 2), heads=(2, 4, 8, 16),
                  patch_hidden=48, hidden_size=384, projection_dim=512, text_hidden=256, text_layers=4,
                  max_seconds=2)


def build_clap_model(root: Path, texts: list[str], *, mel_bins: int, spec_size: int, window_size: int,
                     depths: tuple[int, ...], heads: tuple[int, ...], patch_hidden: int, hidden_size: int,
                     projection_dim: int, text_hidden: int, text_layers: int, max_seconds: int,
                     seed: int = 0) -> Path:
    """A random-init ``ClapModel`` + ``ClapProcessor`` (48 kHz extractor, repeat-padding, as the real
    checkpoints') in ``root/clap-model``, built offline as ``modaltune.testing.tiny_clap`` builds the
    tiny one, with every audio-tower size open (``TinyClapSize`` fixes depths, heads and window)."""
    import tempfile

    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    from modaltune.testing.tiny_clap import SAMPLING_RATE, SPECIAL_TOKENS

    out = root / "clap-model"
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=300, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
                            show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tokenizer = RobertaTokenizer.from_pretrained(tmp, model_max_length=64)
    config = ClapConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": text_hidden, "num_hidden_layers": text_layers,
            "num_attention_heads": 4, "intermediate_size": 4 * text_hidden, "max_position_embeddings": 66,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "projection_dim": projection_dim,
        },
        audio_config={
            "num_mel_bins": mel_bins, "spec_size": spec_size, "window_size": window_size, "patch_size": 4,
            "patch_stride": (4, 4), "depths": list(depths), "num_attention_heads": list(heads),
            "patch_embeds_hidden_size": patch_hidden, "hidden_size": hidden_size,
            "projection_dim": projection_dim, "enable_fusion": False,
        },
        projection_dim=projection_dim,
    )
    torch.manual_seed(seed)
    model = ClapModel(config)
    extractor = ClapFeatureExtractor(feature_size=mel_bins, sampling_rate=SAMPLING_RATE, hop_length=480,
                                     max_length_s=int(max_seconds), truncation="rand_trunc", padding="repeatpad")
    model.save_pretrained(out)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out)
    return out


def sound_data(root: Path, per_class: dict[str, int], seconds: float) -> Path:
    from modaltune.testing.synthetic_audio import write_audio_classification_folder

    out = root / "sounds"
    if not out.exists():
        write_audio_classification_folder(out, per_class=per_class, seed=0, seconds=seconds)
    return out
