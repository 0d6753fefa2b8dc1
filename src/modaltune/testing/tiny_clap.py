"""Small, real CLAP (audio–text) models built offline and saved in standard Hugging Face format.

As ``tiny_clip`` does for CLIP: a RoBERTa-style byte-level BPE tokenizer trained on the given
texts, a ``ClapConfig`` sized down (a 2-stage HTSAT audio tower on 16 mel bins, a 2-layer text
tower), random weights from a seed, and a ``ClapProcessor`` whose feature extractor reads 48 kHz
audio as the real ``laion/clap-htsat-*`` checkpoints do. Written with ``save_pretrained`` so the
code under test loads it through ``ClapModel`` / ``AutoModel`` / ``AutoProcessor.from_pretrained``
exactly as it loads a hub checkpoint.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

#: CLAP's feature extractor works at 48 kHz, whatever rate the files have.
SAMPLING_RATE = 48_000
SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")


@dataclass(frozen=True)
class TinyClapSize:
    """Sizes of the tiny model. The audio tower's time frames (max_seconds · 100 + 1 at a 480
    hop) must fit ``spec_size · (spec_size // mel_bins)``: 64 · 4 = 256 frames, 2.5 s."""

    hidden: int = 32
    projection: int = 16
    text_layers: int = 2
    mel_bins: int = 16
    spec_size: int = 64
    # Whole seconds, as real checkpoints have (10): ClapFeatureExtractor pads short clips with
    # np.pad(max_length_s * rate - n), which rejects a float width.
    max_seconds: int = 1
    vocab_size: int = 300


def build_clap(out_dir: Path, *, texts: Iterable[str], seed: int = 0, size: TinyClapSize = TinyClapSize()) -> Path:
    """A tiny ``ClapModel`` + ``ClapProcessor`` in ``out_dir`` (created), loadable with ``from_pretrained``."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel, ClapProcessor, RobertaTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(list(texts), vocab_size=size.vocab_size, min_frequency=1,
                            special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        tokenizer = RobertaTokenizer.from_pretrained(tmp, model_max_length=64)
    config = ClapConfig(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": size.hidden, "num_hidden_layers": size.text_layers,
            "num_attention_heads": 2, "intermediate_size": 2 * size.hidden, "max_position_embeddings": 66,
            "pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "projection_dim": size.projection,
        },
        audio_config={
            "num_mel_bins": size.mel_bins, "spec_size": size.spec_size, "window_size": 4, "patch_size": 4,
            "patch_stride": (4, 4), "depths": [1, 1], "num_attention_heads": [1, 2],
            "patch_embeds_hidden_size": size.hidden // 2, "hidden_size": size.hidden,
            "projection_dim": size.projection, "enable_fusion": False,
        },
        projection_dim=size.projection,
    )
    torch.manual_seed(seed)
    model = ClapModel(config)
    # "repeatpad" pads short clips by repeating them; clips longer than max_seconds are cropped at a
    # random offset ("rand_trunc"), as the real checkpoints' extractors do.
    extractor = ClapFeatureExtractor(feature_size=size.mel_bins, sampling_rate=SAMPLING_RATE, hop_length=480,
                                     max_length_s=size.max_seconds, truncation="rand_trunc", padding="repeatpad")
    model.save_pretrained(out_dir)
    ClapProcessor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(out_dir)
    return out_dir
