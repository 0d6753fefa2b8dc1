"""Detection training speed, side by side in one run (issue 16, point 8).

    .venv/bin/python benchmarks/bench_detect.py [--steps 12] [--batch 4] [--rounds 2] [--quick]

Full fine-tuning samples/s of a random Grounding DINO (Swin + BERT + fusion encoder + decoder,
built offline from its config, hidden 128, 128 px scenes, 100 queries) on synthetic COCO scenes:
``modaltune train --strategy full`` against Hugging Face ``Trainer`` with the same model, data, batch,
optimizer settings and collate (modaltune's ``detect`` collate, its tensors handed to the model as
``labels`` so both minimise Grounding DINO's own loss). The two alternate for ``--rounds`` rounds
(the machine's load drifts) and the median rate of each is reported. Rates are measured between
the end of the warm-up steps and the last step.

The frozen-feature cache does not apply to detection (``DetectTask.cache_split`` returns None):
every strategy that trains anything of Grounding DINO trains something that the prompt's text
features flow through (a linear probe trains the text projection and the box head, which read the
fusion encoder's and decoder's prompt-conditioned states), so nothing per-image above the frozen
Swin could be cached without caching the Swin's multi-scale maps, which the cache's one tensor per
example does not hold.
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
WARMUP = 2


def _rate(times: list[float], batch: int) -> float:
    span = times[-1] - times[WARMUP - 1]
    return (len(times) - WARMUP) * batch / span


def build(root: Path, quick: bool) -> tuple[Path, Path]:
    from modaltune.testing.synthetic_scenes import write_scenes
    from modaltune.testing.tiny_detect import build_grounding_dino

    size = 64 if quick else 128
    model = build_grounding_dino(root / "gdino", texts=["circle", "square", "triangle"], seed=0, image_size=size,
                                 num_queries=20 if quick else 100, width=32 if quick else 128,
                                 layers=1 if quick else 2)
    scenes = write_scenes(root / "scenes", seed=0, count=64, size=(size, size), max_objects=3, negatives=0.1)
    return model, scenes.coco


def run_modaltune(model: Path, data: Path, out: Path, steps: int, batch: int) -> float:
    from modaltune.api import train
    from modaltune.config import build_config

    shutil.rmtree(out, ignore_errors=True)
    cfg = build_config(task="detect", model=str(model), data=str(data), output=str(out), strategy="full",
                       epochs=1, max_steps=steps, batch_size=batch, lr=LR, warmup_ratio=0.0, keep_last=1,
                       zero_shot_baseline=False, val_fraction=0.05)
    train(cfg)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return _rate([h["elapsed"] for h in history if h["kind"] == "step"], batch)


def run_hf_trainer(model_dir: Path, data: Path, out: Path, steps: int, batch: int) -> float:
    """HF Trainer over the same rows, with modaltune's collate turned into the model's own inputs."""
    from transformers import AutoModelForZeroShotObjectDetection, Trainer, TrainerCallback, TrainingArguments

    from modaltune.data import load_dataset
    from modaltune.tasks.base import create_task, task_class
    from modaltune.trainer.batches import MediaDataset

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            times.append(time.perf_counter())

    cls = task_class("detect")
    rows, _ = load_dataset(str(data), require=cls.fields)
    task = create_task("detect", **cls.options_from_rows(rows))
    loaded = task.load(model_dir)  # the processor and categories; the model itself is loaded plainly below
    dataset = MediaDataset(rows)

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
        weight_decay=0.01, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, logging_strategy="no",
        save_strategy="no", report_to=[], dataloader_num_workers=0, remove_unused_columns=False, use_cpu=True,
        seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=[dataset[i] for i in range(len(dataset))],
                      data_collator=collate, callbacks=[Clock()])
    trainer.train()
    return _rate(times, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="a tiny model and few steps (a smoke test)")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    steps = 4 if args.quick else args.steps
    root = args.output or Path(tempfile.mkdtemp(prefix="bench-detect-"))
    model, data = build(root, args.quick)
    ours, theirs = [], []
    for r in range(args.rounds):
        ours.append(run_modaltune(model, data, root / f"run-{r}", steps, args.batch))
        theirs.append(run_hf_trainer(model, data, root / f"hf-{r}", steps, args.batch))
        print(f"round {r + 1}: modaltune {ours[-1]:.2f} samples/s, HF Trainer {theirs[-1]:.2f} samples/s", flush=True)
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"machine: {machine()}; torch threads {torch.get_num_threads()}")
    print(f"Grounding DINO full fine-tuning, batch {args.batch}, {steps} steps, {args.rounds} rounds: "
          f"modaltune {a:.2f} samples/s, HF Trainer {b:.2f} samples/s, ratio {a / b:.2f}")
    print("feature cache: not applicable to detection (see the module docstring)")


if __name__ == "__main__":
    main()
