"""Epoch time with the frozen-feature cache vs without (issue 4), side by side in one run.

    .venv/bin/python benchmarks/bench_cache.py [--quick]

A 12-block CLIP with ViT-B/32-like dimensions (random init), 4 classes. For each of linear probe
and ``last-n --layers 1``, training runs 3 epochs with and without the cache (the cached run
starting from an empty cache); the time of an epoch after the first comes from the trainer's own
per-step clock in history.jsonl (epochs 2 and 3, each with its validation pass and checkpoint,
as in real use). Targets: >= 50x (linear probe),
>= 3x (last-n 1: the one block still trained bounds it).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import B32, build_model, class_data, machine  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a 4-block, 256-wide model (smoke test)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    dims = dict(B32, hidden_size=256, layers=4, heads=4, image_size=64) if args.quick else B32
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-cache-"))
    data = class_data(work, {"train": 32, "val": 16}, dims["image_size"])
    from modaltune.testing.synthetic import vocabulary_texts

    model = build_model(work, vocabulary_texts(), **dims)
    print(f"machine: {machine()}")
    print(f"model: CLIP {dims}; 128 train + 64 val images, batch 16")
    for strategy, layers, target in (("linear-probe", None, 50), ("last-n", 1, 3)):
        epoch, final = {}, {}
        for cache in (False, True):
            epoch[cache], final[cache] = epoch_seconds(model, data, work / "run", strategy, layers, cache)
        same = (abs(final[True]["loss"] - final[False]["loss"]) <= 1e-5
                and final[True]["accuracy"] == final[False]["accuracy"])
        name = strategy + (f" {layers}" if layers else "")
        print(f"{name:14s} epoch after the first: {epoch[False]:7.3f}s without cache, {epoch[True]:7.3f}s with "
              f"-> {epoch[False] / epoch[True]:6.1f}x (target >= {target}x); same metrics: {same}")


if __name__ == "__main__":
    main()
