"""Epoch time with the frozen-feature cache vs without (issue 4), side by side in one run.

    .venv/bin/python benchmarks/bench_cache.py [--quick] [--family clip|clap|both]

Images (``clip``): a 12-block CLIP with ViT-B/32-like dimensions (random init), 4 shape classes,
128 train + 64 val images. Audio (``clap``, issue 15): a CLAP with HTSAT-tiny's audio tower
(`_common.HTSAT_TINY`: 4 Swin stages 2/2/6/2 at half width, 48 -> 384, on a 128 x 128 mel image;
random init), 4 sound classes (tone, chirp, noise, rhythm), 32 train + 16 val clips of 1.5 s in mixed
formats and rates. For each of linear probe and ``last-n --layers 1``, training runs 3 epochs with
and without the cache (the cached run starting from an empty cache); the time of an epoch after the
first comes from the trainer's own per-step clock in history.jsonl (epochs 2 and 3, each with its
validation pass and checkpoint, as in real use). Targets (images): >= 50x (linear probe),
>= 3x (last-n 1: the one block still trained bounds it). None is set for audio: CLAP's blocks are
HTSAT's stages, so last-n 1 still trains the whole last stage (2 Swin blocks at its full width).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import B32, HTSAT_TINY, build_clap_model, build_model, class_data, machine, sound_data  # noqa: E402


def epoch_seconds(model: Path, data: Path, out: Path, strategy: str, layers: int | None,
                  cache: bool) -> tuple[float, dict]:
    """Mean wall time of epochs 2 and 3 of a 3-epoch run, from the trainer's per-step clock: from
    the last step of epoch 1 to the last step of epoch 3 (each epoch's validation and checkpoint
    included, the one-off feature pass and loading excluded)."""
    import json

    _, metrics = train_seconds(model, data, out, strategy, layers, 3, cache)
    steps = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    steps = [h for h in steps if h["kind"] == "step"]
    end = {h["epoch"]: h["elapsed"] for h in steps}  # last step seen in each epoch
    return (end[2] - end[0]) / 2, metrics


def train_seconds(model: Path, data: Path, out: Path, strategy: str, layers: int | None, epochs: int,
                  cache: bool) -> tuple[float, dict]:
    from modaltune.api import train
    from modaltune.config import build_config

    shutil.rmtree(out, ignore_errors=True)
    cfg = build_config(task="classify", model=str(model), data=str(data), output=str(out), strategy=strategy,
                       layers=layers, epochs=epochs, batch_size=16, lr=1e-3, keep_last=1, zero_shot_baseline=False,
                       feature_cache=cache, cache_dir=str(out) + "-cache")
    metrics = train(cfg)
    shutil.rmtree(str(out) + "-cache", ignore_errors=True)
    return metrics["run"]["train_seconds"], metrics


def compare(model: Path, data: Path, work: Path, targets: dict[str, int | None]) -> None:
    """Each strategy cached vs uncached, side by side, one line each."""
    for strategy, layers in (("linear-probe", None), ("last-n", 1)):
        epoch, final = {}, {}
        for cache in (False, True):
            epoch[cache], final[cache] = epoch_seconds(model, data, work / "run", strategy, layers, cache)
        same = (abs(final[True]["loss"] - final[False]["loss"]) <= 1e-5
                and final[True]["accuracy"] == final[False]["accuracy"])
        name = strategy + (f" {layers}" if layers else "")
        target = targets[name]
        print(f"{name:14s} epoch after the first: {epoch[False]:7.3f}s without cache, {epoch[True]:7.3f}s with "
              f"-> {epoch[False] / epoch[True]:6.1f}x ({f'target >= {target}x' if target else 'no target'}); "
              f"same metrics: {same} (loss {final[False]['loss']:.6f} vs {final[True]['loss']:.6f}, "
              f"accuracy {final[False]['accuracy']:.4f} vs {final[True]['accuracy']:.4f})", flush=True)


def bench_clip(work: Path, quick: bool) -> None:
    from modaltune.testing.synthetic import vocabulary_texts

    dims = dict(B32, hidden_size=256, layers=4, heads=4, image_size=64) if quick else B32
    data = class_data(work, {"train": 32, "val": 16}, dims["image_size"])
    model = build_model(work, vocabulary_texts(), **dims)
    print(f"model: CLIP {dims}; 128 train + 64 val images, batch 16", flush=True)
    compare(model, data, work, {"linear-probe": 50, "last-n 1": 3})


def bench_clap(work: Path, quick: bool) -> None:
    from modaltune.testing.synthetic_audio import audio_caption_texts

    dims = (dict(HTSAT_TINY, depths=(1, 1, 1), heads=(2, 2, 4), patch_hidden=64, hidden_size=256,
                 text_hidden=64, text_layers=2, spec_size=64, mel_bins=16, projection_dim=64)
            if quick else HTSAT_TINY)
    data = sound_data(work, {"train": 8, "val": 4}, seconds=1.5)
    model = build_clap_model(work, audio_caption_texts(), **dims)
    print(f"model: CLAP {dims}; 32 train + 16 val clips of 1.5 s (4 sound classes), batch 16", flush=True)
    compare(model, data, work, {"linear-probe": None, "last-n 1": None})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="small models (smoke test)")
    parser.add_argument("--family", choices=("clip", "clap", "both"), default="both",
                        help="images (CLIP), audio (CLAP) or both (default)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-cache-"))
    print(f"machine: {machine()}", flush=True)
    if args.family in ("clip", "both"):
        bench_clip(work, args.quick)
    if args.family in ("clap", "both"):
        bench_clap(work, args.quick)


if __name__ == "__main__":
    main()
