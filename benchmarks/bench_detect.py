"""Detection training speed, side by side in one run (issue 16, point 8).

    .venv/bin/python benchmarks/bench_detect.py [--part trainer|cache|both] [--steps 20] [--batch 4] [--rounds 5]
        [--threads 1] [--sides modaltune,hf,...] [--quick]

Full fine-tuning samples/s of a random Grounding DINO (Swin + BERT + fusion encoder + decoder,
built offline from its config, hidden 128, 128 px scenes, 100 queries) on synthetic COCO scenes:
``modaltune train --strategy full`` against Hugging Face ``Trainer`` with the same model, training
rows, batch, optimizer (fused AdamW, lr 1e-4, weight decay 0.01), cosine schedule without warm-up,
clipping at 1.0, fp32, no dataloader worker processes, and collate (modaltune's ``detect`` collate, its
tensors handed to the model as ``labels`` so both minimise Grounding DINO's own loss). Both decode the
images per step (Trainer reads the same lazily decoding dataset), and both run with subnormal floats flushed
(modaltune's loop does it on CPU; Trainer does not, so it is set around ``trainer.train()``: the same
arithmetic on both sides). Rates are measured between the end of the warm-up steps and the last step,
at each side's step-end hook (modaltune's progress callback, a Trainer callback), in wall time and in
this process's CPU time (less moved by other processes on a shared machine); modaltune's validation
and checkpoint come after its last step and are outside the span. Rounds alternate which side runs
first (the machine's load drifts, and the second run of a process finds warm caches), and each
round's ratio is printed with the median.

Four sides by default (``--sides`` picks some): ``modaltune`` (its default: without worker processes
the next batch is prepared in a background thread while the step computes), ``modaltune-sync``
(``--no-prefetch``: prepared between steps, as before), ``hf`` (Trainer's default
``dataloader_num_workers=0``: prepared between steps) and ``hf-worker`` (``dataloader_num_workers=1``:
prepared in one worker process, Trainer's own way to overlap). The ratios are modaltune over ``hf``,
and, as a second reference, over ``hf-worker`` in wall time only: the CPU clock counts this process's
threads (modaltune's prefetching thread included) but not a worker process's CPU.

The frozen-feature cache does not apply to Grounding DINO (``DetectTask.cache_split`` returns None
for it): every strategy that trains anything of it trains something the prompt's text features flow
through, so nothing per image above the frozen Swin could be cached without caching the Swin's
multi-scale maps (several tensors of varying size per image; the cache holds one per example).
OWLv2's linear probe trains heads over the frozen image tower and frozen text queries, so ``--part
cache`` times an OWLv2 linear-probe epoch with the cache against one without (a ViT-S/16-like tower).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import machine  # noqa: E402

LR = 1e-4
WARMUP = 3
SIDES = ("modaltune", "modaltune-sync", "hf", "hf-worker")


def _rate(times: list[float], batch: int) -> float:
    return (len(times) - WARMUP) * batch / (times[-1] - times[WARMUP - 1])


class StepClock:
    """Wall and CPU time (this process's, all its threads) at the end of each optimizer step: the
    CPU rate is less moved by other processes sharing the cores than the wall rate."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def tick(self) -> None:
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    # modaltune's progress protocol (``train(progress=...)``): advance is called after each step
    def start(self, total: int, done: int) -> None: ...

    def advance(self, step: int, loss: float) -> None:
        self.tick()

    def stop(self) -> None: ...

    def rates(self, batch: int) -> tuple[float, float]:
        return _rate(self.wall, batch), _rate(self.cpu, batch)


def _load() -> str:
    import os

    return " ".join(f"{v:.1f}" for v in os.getloadavg())


def build(root: Path, quick: bool) -> tuple[Path, Path, Path]:
    from modaltune.testing.synthetic_scenes import write_scenes
    from modaltune.testing.tiny_detect import build_grounding_dino

    size = 64 if quick else 128
    model = build_grounding_dino(root / "gdino", texts=["circle", "square", "triangle"], seed=0, image_size=size,
                                 num_queries=20 if quick else 100, width=32 if quick else 128,
                                 layers=1 if quick else 2)
    train = write_scenes(root / "scenes", seed=0, count=64, size=(size, size), max_objects=3, negatives=0.1)
    val = write_scenes(root / "val-scenes", seed=1, count=4, size=(size, size), max_objects=3, negatives=0.0)
    return model, train.coco, val.coco


def run_modaltune(model: Path, data: Path, val: Path, out: Path, steps: int, batch: int,
                  prefetch: bool = True) -> tuple[float, float]:
    from modaltune.api import train
    from modaltune.config import build_config

    shutil.rmtree(out, ignore_errors=True)
    cfg = build_config(task="detect", model=str(model), data=str(data), val=str(val), output=str(out),
                       strategy="full", epochs=1, max_steps=steps, batch_size=batch, lr=LR, warmup_ratio=0.0,
                       schedule="cosine", weight_decay=0.01, max_grad_norm=1.0, precision="fp32", workers=0,
                       prefetch=prefetch, keep_last=1, zero_shot_baseline=False)
    clock = StepClock()
    train(cfg, progress=clock)
    return clock.rates(batch)


def run_hf_trainer(model_dir: Path, data: Path, out: Path, steps: int, batch: int,
                   workers: int = 0) -> tuple[float, float]:
    """HF Trainer over the same rows, with modaltune's collate turned into the model's own inputs."""
    from transformers import AutoModelForZeroShotObjectDetection, Trainer, TrainerCallback, TrainingArguments

    from modaltune.data import load_dataset
    from modaltune.tasks.base import create_task, task_class
    from modaltune.trainer.batches import MediaDataset

    clock = StepClock()

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            clock.tick()

    cls = task_class("detect")
    rows, _ = load_dataset(str(data), require=cls.fields)
    task = create_task("detect", **cls.options_from_rows(rows))
    loaded = task.load(model_dir)  # the processor and categories; the model itself is loaded plainly below

    def collate(items: list) -> dict:
        batch = task.collate(loaded, items)
        inputs = {k: batch[k] for k in ("pixel_values", "pixel_mask")}
        inputs.update({k.split(":", 1)[1]: v[:, 0] for k, v in batch.items()  # (B, 1, length) -> (B, length)
                       if k.startswith("prompt0:") and not k.endswith(":classes")})
        inputs["labels"] = [{"class_labels": labels[labels >= 0], "boxes": boxes[labels >= 0]}
                            for boxes, labels in zip(batch["target_boxes"], batch["target_labels"])]
        return inputs

    model = AutoModelForZeroShotObjectDetection.from_pretrained(model_dir)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=LR,
        optim="adamw_torch_fused", weight_decay=0.01, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0,
        logging_strategy="no", save_strategy="no", report_to=[], dataloader_num_workers=workers,
        remove_unused_columns=False, use_cpu=True, seed=0, disable_tqdm=True)
    # Decoded per step, as modaltune's loop does (MediaDataset takes plain indices too).
    trainer = Trainer(model=model, args=args, train_dataset=MediaDataset(rows), data_collator=collate,
                      callbacks=[Clock()])
    flushed = torch.set_flush_denormal(True)
    try:
        trainer.train()
    finally:
        if flushed:
            torch.set_flush_denormal(False)
    return clock.rates(batch)


def build_owl_probe(root: Path, quick: bool) -> tuple[Path, Path, Path]:
    """A random OWLv2 with a ViT-S/16-like image tower (6 blocks of width 384 on 128 px images: 64
    patches; 2 blocks for --quick) and the tiny text tower, on the same kind of scenes."""
    from transformers import AutoConfig, Owlv2ForObjectDetection

    from modaltune.testing.synthetic_scenes import write_scenes
    from modaltune.testing.tiny_detect import build_owl

    out = build_owl(root / "owlv2", kind="owlv2", texts=["circle", "square", "triangle"], seed=0, image_size=128,
                    patch_size=16)
    config = AutoConfig.from_pretrained(out)
    config.vision_config.update({"hidden_size": 384, "num_hidden_layers": 2 if quick else 6, "num_attention_heads": 6,
                                 "intermediate_size": 1536})
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config)
    with torch.no_grad():  # as build_owl does: boxes start around their patch, not saturated
        model.box_head.dense2.weight.zero_()
        model.box_head.dense2.bias.zero_()
    model.save_pretrained(out)
    train = write_scenes(root / "owl-scenes", seed=0, count=16 if quick else 64, size=(128, 128), max_objects=3,
                         negatives=0.1)
    val = write_scenes(root / "owl-val-scenes", seed=1, count=8 if quick else 16, size=(128, 128), max_objects=3,
                       negatives=0.0)
    return out, train.coco, val.coco


def probe_epoch_seconds(model: Path, data: Path, val: Path, out: Path, cache: bool) -> tuple[float, dict]:
    """Mean wall time of epochs 2 and 3 of a 3-epoch OWLv2 linear probe, from the trainer's per-step
    clock (each epoch's validation and checkpoint included; the one-off feature pass and loading not)."""
    from modaltune.api import train
    from modaltune.config import build_config

    shutil.rmtree(out, ignore_errors=True)
    features = Path(str(out) + "-cache")
    shutil.rmtree(features, ignore_errors=True)
    metrics = train(build_config(task="detect", model=str(model), data=str(data), val=str(val), output=str(out),
                                 strategy="linear-probe", epochs=3, batch_size=8, lr=1e-3, keep_last=1,
                                 zero_shot_baseline=False, feature_cache=cache, cache_dir=str(features)))
    shutil.rmtree(features, ignore_errors=True)
    steps = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    end = {h["epoch"]: h["elapsed"] for h in steps if h["kind"] == "step"}  # last step seen in each epoch
    return (end[2] - end[0]) / 2, metrics


def cache_ratio(root: Path, rounds: int, quick: bool) -> None:
    model, data, val = build_owl_probe(root, quick)
    plain, cached, ratios = [], [], []
    for r in range(rounds):
        load_before = _load()
        order = [False, True] if r % 2 else [True, False]
        seconds = {}
        for cache in order:
            seconds[cache], metrics = probe_epoch_seconds(model, data, val, root / f"owl-{cache}-{r}", cache)
            if cache:
                feature_pass = metrics["run"]["feature_cache"]["seconds"]
            else:
                assert metrics["run"]["feature_cache"] is None
        plain.append(seconds[False])
        cached.append(seconds[True])
        ratios.append(plain[-1] / cached[-1])
        print(f"cache round {r + 1} (load {load_before} -> {_load()}): epoch {plain[-1]:.2f} s uncached, "
              f"{cached[-1]:.3f} s cached (one-off feature pass {feature_pass:.2f} s), ratio {ratios[-1]:.1f}",
              flush=True)
    print(f"OWLv2 linear probe, 3 epochs, {rounds} rounds: median epoch {statistics.median(plain):.2f} s uncached, "
          f"{statistics.median(cached):.3f} s cached, median ratio {statistics.median(ratios):.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both sides")
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps (a smoke test)")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--part", choices=["trainer", "cache", "both"], default="both",
                        help="the HF Trainer comparison, the OWLv2 feature-cache ratio, or both")
    parser.add_argument("--sides", default=",".join(SIDES),
                        help=f"trainer part: the runs of each round, from {', '.join(SIDES)} (modaltune and hf needed)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = 6 if args.quick else args.steps
    rounds = 2 if args.quick else args.rounds
    root = args.output or Path(tempfile.mkdtemp(prefix="bench-detect-"))
    if args.part in ("cache", "both"):
        cache_ratio(root, rounds, args.quick)
    if args.part == "cache":
        return
    sides = args.sides.split(",")
    if not {"modaltune", "hf"} <= set(sides) or not set(sides) <= set(SIDES):
        parser.error(f"--sides: modaltune and hf, and any of {', '.join(SIDES)}")
    model, data, val = build(root, args.quick)
    rates: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
    for r in range(rounds):
        load_before = _load()
        order = sides[r % len(sides):] + sides[:r % len(sides)]  # each side leads in turn
        for side in order:
            out = root / f"{side}-{r}"
            rates[side].append(run_hf_trainer(model, data, out, steps, args.batch, workers=int(side == "hf-worker"))
                               if side.startswith("hf") else
                               run_modaltune(model, data, val, out, steps, args.batch, prefetch=side == "modaltune"))
        print(f"round {r + 1} ({' > '.join(order)}; load {load_before} -> {_load()}): "
              + ", ".join(f"{side} {rates[side][r][0]:.3f}/s ({rates[side][r][1]:.3f}/CPU-s)" for side in sides)
              + f"; ratio vs hf {_ratio(rates, 'hf', r, 0):.3f} wall, {_ratio(rates, 'hf', r, 1):.3f} CPU"
              + (f"; vs hf-worker {_ratio(rates, 'hf-worker', r, 0):.3f} wall" if "hf-worker" in sides else ""),
              flush=True)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    medians = ", ".join(f"{side} {statistics.median(w for w, _ in rates[side]):.3f}" for side in sides)
    print(f"Grounding DINO full fine-tuning, batch {args.batch}, {steps} steps ({WARMUP} warm-up), {rounds} rounds: "
          f"median samples/s {medians}; median ratio vs hf {_median_ratio(rates, 'hf', 0):.3f} wall, "
          f"{_median_ratio(rates, 'hf', 1):.3f} CPU"
          + (f"; vs hf-worker {_median_ratio(rates, 'hf-worker', 0):.3f} wall" if "hf-worker" in sides else "")
          + (f"; modaltune over modaltune-sync {_median_ratio(rates, 'modaltune-sync', 0):.3f} wall, "
             f"{_median_ratio(rates, 'modaltune-sync', 1):.3f} CPU" if "modaltune-sync" in sides else ""))


def _ratio(rates: dict[str, list[tuple[float, float]]], other: str, r: int, clock: int) -> float:
    return rates["modaltune"][r][clock] / rates[other][r][clock]


def _median_ratio(rates: dict[str, list[tuple[float, float]]], other: str, clock: int) -> float:
    return statistics.median(_ratio(rates, other, r, clock) for r in range(len(rates[other])))


if __name__ == "__main__":
    main()
