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
