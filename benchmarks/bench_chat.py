"""Chat SFT speed: modaltune's LoRA training vs TRL's SFTTrainer on the same model, data and masking.

Both sides train the same tiny-but-not-trivial LLaVA (CLIP tower, 4-layer Llama of width 256) with
the same PEFT LoRA model (every linear layer of the language model, r=8, built by modaltune's
``apply_strategy`` from seed 0 for each run) on the same synthetic conversations, batched by the same
collator (modaltune's chat task: the model's chat template, labels on the assistant turns only) in the
same order (TRL reads the rows in the order modaltune's plan draws them), for one epoch of optimizer
steps at the same batch size, learning rate, schedule (cosine, no warmup), weight decay, gradient
clipping and precision (fp32, no autocast, no gradient checkpointing), with fused AdamW on both. Both
runs end with one checkpoint (weights, optimizer, scheduler): modaltune's end-of-run one, TRL's
``save_steps`` at the last step.

Rounds alternate which side goes first so machine load hits both alike. Per round it prints trained
target tokens (labels that are not -100, after the shift) per second of the whole training call, per
second of the steps alone (from the start of training to the end of the last step, so setup and the
checkpoint are out), and the process CPU time of the call (hardly moved by machine load with one thread); the
ratio is the median of the per-round ratios. Memory: the resident set size of a fresh process per
strategy (LoRA, full) once the model is loaded and its peak while training a few steps, on a larger
tiny LLaVA (``--memory-width``/``--memory-layers``) where LoRA's saving shows.

    .venv/bin/pip install -e '.[bench-chat]'   # TRL
    .venv/bin/python benchmarks/bench_chat.py [--rounds 3] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

BATCH = 8
LR = 5e-4
#: How each run is timed: the whole training call, the steps alone, and the CPU time of each.
TIMINGS = ("seconds", "step_seconds", "cpu_seconds", "step_cpu_seconds")
ROWS = 128  # one epoch = ROWS / BATCH optimizer steps, so modaltune checkpoints once, at the end


def build(root: Path, *, hidden: int = 256, layers: int = 4, rows: int = ROWS) -> tuple[Path, Path]:
    from modaltune.testing.synthetic_chat import chat_texts, write_llava_json
    from modaltune.testing.tiny_chat import TinyChatSize, build_llava

    model = root / f"llava-{hidden}x{layers}"
    if not (model / "config.json").exists():
        size = TinyChatSize(hidden=hidden, layers=layers, heads=4, intermediate=4 * hidden, image_size=32, patch_size=8)
        build_llava(model, texts=chat_texts(), seed=0, size=size)
    data = root / "data" / "chat.json"
    if not data.exists():
        data = write_llava_json(root / "data", rows, seed=0, image_size=32)
    return model, data


def _setup(model: Path, data: Path, strategy: str) -> tuple[Any, Any, list[Any]]:
    from modaltune.data import load_dataset
    from modaltune.strategies import apply_strategy
    from modaltune.tasks.base import create_task, task_class

    rows, _ = load_dataset(str(data), require=task_class("chat").fields)
    task = create_task("chat", max_new_tokens=4)
    torch.manual_seed(0)
    loaded = task.load(model)
    apply_strategy(task, loaded, strategy)
    return task, loaded, rows


def _decoded(rows: list[Any]) -> list[tuple[Any, dict[str, Any]]]:
    from modaltune.data.media import get_decoder

    return [(row, {name: get_decoder("image").load(path) for name, path in row.media.items()}) for row in rows]


def _config(model: Path, data: Path, strategy: str, steps: int, out: Path) -> Any:
    from modaltune.config import build_config

    # save_every/eval_every past the run: the only checkpoint is the end-of-run one (TRL saves once too)
    return build_config(
        task="chat",
        model=str(model),
        data=str(data),
        strategy=strategy,
        epochs=100,
        max_steps=steps,
        batch_size=BATCH,
        lr=LR,
        warmup_ratio=0.0,
        output=str(out),
        save_every=10_000,
        eval_every=10_000,
        keep_last=1,
    )


def _trainable(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _result(
    seconds: float,
    cpu: float,
    clock: dict[str, float],
    *,
    steps: int,
    tokens: float,
    model: torch.nn.Module,
    checkpoints: int,
) -> dict[str, float]:
    """One side's run as `main` compares them: its timings (``clock``: what its step callback recorded)
    and the work done, which must be the same on both sides."""
    return {
        "seconds": seconds,
        "step_seconds": clock["end"] - clock["start"],
        "step_cpu_seconds": clock["cpu_end"] - clock["cpu_start"],
        "cpu_seconds": cpu,
        "steps": steps,
        "tokens": tokens,
        "trainable": _trainable(model),
        "threads": clock["threads"],
        "checkpoints": checkpoints,
    }


def run_ours(model: Path, data: Path, steps: int, strategy: str = "lora") -> dict[str, float]:
    from modaltune.run import RunDir
    from modaltune.trainer.callbacks import Callback, Event
    from modaltune.trainer.loop import fit

    task, loaded, rows = _setup(model, data, strategy)
    tokens = [0.0]
    weight = task.loss_weight

    def counted(batch: dict[str, torch.Tensor]) -> float:  # the loop asks once per micro-batch
        value = weight(batch)
        tokens[0] += value
        return value

    task.loss_weight = counted
    clock: dict[str, float] = {}

    class Clock(Callback):
        def on_fit_start(self, event: Event) -> None:
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, event: Event) -> None:
            clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()
            clock["threads"] = torch.get_num_threads()

    out = Path(tempfile.mkdtemp(prefix="bench-chat-ours-"))
    cfg = _config(model, data, strategy, steps, out)
    torch.set_flush_denormal(True)  # what fit does on a CPU anyway
    cpu, tick = time.process_time(), time.perf_counter()
    result = fit(cfg, task, loaded, rows, [], RunDir(out).create(), callbacks=[Clock()])
    seconds, cpu = time.perf_counter() - tick, time.process_time() - cpu
    saved = len(list((out / "checkpoints").glob("*")))
    return _result(
        seconds, cpu, clock, steps=result.state.step, tokens=tokens[0], model=loaded.model, checkpoints=saved
    )


def plan_order(n: int, steps: int) -> list[int]:
    """The rows in the order modaltune's loop trains on them (seed 0), ``steps`` batches' worth."""
    from modaltune.trainer.batches import plan_epoch

    order: list[int] = []
    epoch = 0
    while len(order) < steps * BATCH:
        order += [i for group in plan_epoch(n, BATCH, 1, seed=0, epoch=epoch) for micro in group for _, i in micro]
        epoch += 1
    return order[: steps * BATCH]


def run_trl(model: Path, data: Path, steps: int) -> dict[str, float]:
    import datasets
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    task, loaded, rows = _setup(model, data, "lora")
    items = _decoded(rows)
    order = datasets.Dataset.from_dict({"index": plan_order(len(items), steps)})
    tokens = [0.0]

    def collate(batch: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        out = task.collate(loaded, [items[b["index"]] for b in batch])
        tokens[0] += task.loss_weight(out)
        return out

    clock: dict[str, float] = {}

    class Clock(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock["start"], clock["cpu_start"] = time.perf_counter(), time.process_time()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            clock["end"], clock["cpu_end"] = time.perf_counter(), time.process_time()
            clock["threads"] = torch.get_num_threads()

    out = tempfile.mkdtemp(prefix="bench-chat-trl-")
    args = SFTConfig(
        output_dir=out,
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        learning_rate=LR,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.01,
        max_grad_norm=1.0,
        optim="adamw_torch_fused",
        logging_steps=10_000,
        save_strategy="steps",
        save_steps=steps,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        train_sampling_strategy="sequential",
        # SFTConfig defaults to bf16 autocast and gradient checkpointing; modaltune trains in
        # fp32 without checkpointing unless asked, so both are off here (bf16 on this CPU is ~10x slower)
        bf16=False,
        gradient_checkpointing=False,
    )
    loaded.model.train()
    trainer = SFTTrainer(
        model=loaded.model.backbone,
        args=args,
        train_dataset=order,
        data_collator=collate,
        processing_class=loaded.processor,
        callbacks=[Clock()],
    )
    # fit flushes subnormal floats on a CPU (they made steps ~10x slower here) and puts the flag back
    # when it ends; the same for TRL, so the ratio compares the loops, not this CPU quirk.
    torch.set_flush_denormal(True)
    cpu, tick = time.process_time(), time.perf_counter()
    trainer.train()
    seconds, cpu = time.perf_counter() - tick, time.process_time() - cpu
    torch.set_flush_denormal(False)
    saved = len(list(Path(out).glob("checkpoint-*")))
    return _result(
        seconds, cpu, clock, steps=trainer.state.global_step, tokens=tokens[0], model=trainer.model, checkpoints=saved
    )


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def training_memory(model: Path, data: Path, strategy: str, steps: int) -> dict[str, float]:
    """Resident memory of a process that trains: its RSS once the model is loaded (imports, data, the
    weights read in) and its peak RSS by the end of the last of ``steps`` steps (the kernel's high-water
    mark, so no short peak is missed; read before the end-of-run checkpoint, whose serialisation buffers
    are not training's), the difference being gradients, optimizer state and activations."""
    import resource

    from modaltune.run import RunDir
    from modaltune.trainer.callbacks import Callback, Event
    from modaltune.trainer.loop import fit

    task, loaded, rows = _setup(model, data, strategy)
    with torch.no_grad():  # safetensors weights may be mapped lazily: page them in before the baseline
        for p in loaded.model.parameters():
            p.sum()
    base = _rss_mib()
    peak = [base]

    class HighWater(Callback):
        def on_step_end(self, event: Event) -> None:
            peak[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux

    out = Path(tempfile.mkdtemp(prefix="bench-chat-mem-"))
    fit(
        _config(model, data, strategy, steps, out),
        task,
        loaded,
        rows,
        [],
        RunDir(out).create(),
        callbacks=[HighWater()],
    )
    return {
        "loaded_mib": base,
        "peak_mib": peak[0],
        "training_growth_mib": peak[0] - base,
        "trainable": _trainable(loaded.model),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
    }


def peak_memory(model: Path, data: Path, strategy: str, steps: int) -> dict[str, float]:
    """`training_memory` in a fresh process (so one strategy's memory does not hide the other's)."""
    here = str(Path(__file__).parent)
    code = (
        f"import sys, json, torch; torch.set_num_threads(1); sys.path.insert(0, {here!r}); import bench_chat;"
        f"from pathlib import Path; print(json.dumps(bench_chat.training_memory(Path({str(model)!r}), "
        f"Path({str(data)!r}), {strategy!r}, {steps})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _ratio(ours: list[dict[str, float]], theirs: list[dict[str, float]], key: str) -> list[float]:
    """Per round: modaltune's tokens per second over TRL's, timed by ``key``."""
    return [(a["tokens"] / a[key]) / (b["tokens"] / b[key]) for a, b in zip(ours, theirs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="speed rounds (0: memory only)")
    parser.add_argument("--quick", action="store_true", help="1 round of 3 steps, memory on the speed model")
    parser.add_argument("--memory-width", type=int, default=512)
    parser.add_argument("--memory-layers", type=int, default=6)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    steps = 3 if args.quick else ROWS // BATCH
    rounds = 1 if args.quick else args.rounds
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    model, data = build(root)
    _, loaded, rows = _setup(model, data, "lora")
    total = sum(p.numel() for p in loaded.model.parameters())
    print(
        f"model: tiny LLaVA, {total / 1e6:.1f} M parameters, LoRA trains {_trainable(loaded.model) / 1e3:.0f} K; "
        f"{len(rows)} conversations, batch {BATCH}, {steps} steps; load {os.getloadavg()[0]:.1f}"
    )
    del loaded
    ours, theirs = [], []
    for r in range(rounds):
        sides = [("ours", run_ours), ("trl", run_trl)]
        if r % 2:  # who goes first alternates, so neither always meets the other's leftovers
            sides.reverse()
        got = {name: fn(model, data, steps) for name, fn in sides}
        a, b = got["ours"], got["trl"]
        # identical work: same steps, batches (so target tokens), trainable parameters, one checkpoint each
        for key in ("steps", "tokens", "trainable", "checkpoints", "threads"):
            assert a[key] == b[key], (key, a, b)
        ours.append(a)
        theirs.append(b)
        one = {key: _ratio([a], [b], key)[0] for key in TIMINGS}
        side = {
            name: f"{x['tokens'] / x['seconds']:.0f} tok/s ({x['seconds']:.2f} s, steps {x['step_seconds']:.2f} s, "
            f"CPU {x['cpu_seconds']:.2f} s, steps' CPU {x['step_cpu_seconds']:.2f} s)"
            for name, x in (("ours", a), ("trl", b))
        }
        print(
            f"round {r + 1} ({sides[0][0]} first, load {os.getloadavg()[0]:.1f}): {a['tokens']:.0f} target tokens; "
            f"modaltune {side['ours']}, TRL {side['trl']}; ratio {one['seconds']:.2f} (steps only "
            f"{one['step_seconds']:.2f}, CPU {one['cpu_seconds']:.2f}, steps' CPU {one['step_cpu_seconds']:.2f})"
        )
    ratios = {key: _ratio(ours, theirs, key) for key in TIMINGS}
    medians = {key: statistics.median(values) if values else float("nan") for key, values in ratios.items()}
    print(
        f"median ratio (modaltune / TRL, trained target tokens per second): {medians['seconds']:.2f} whole call, "
        f"{medians['step_seconds']:.2f} steps only, {medians['cpu_seconds']:.2f} by CPU time, "
        f"{medians['step_cpu_seconds']:.2f} by the steps' CPU time"
    )
    memory_model = model if args.quick else build(root, hidden=args.memory_width, layers=args.memory_layers)[0]
    memory = {strategy: peak_memory(memory_model, data, strategy, 3) for strategy in ("lora", "full")}
    print(
        f"memory ({memory['full']['parameters'] / 1e6:.1f} M parameters): "
        + "; ".join(
            f"{k} ({v['trainable'] / 1e6:.2f} M trainable): {v['loaded_mib']:.0f} MiB loaded, peak {v['peak_mib']:.0f} "
            f"MiB (+{v['training_growth_mib']:.0f})"
            for k, v in memory.items()
        )
        + f"; load {os.getloadavg()[0]:.1f}"
    )
    if args.json:
        result = {
            "ratio_median": medians["seconds"],
            "ratio_median_steps": medians["step_seconds"],
            "ratio_median_cpu": medians["cpu_seconds"],
            "ratio_median_steps_cpu": medians["step_cpu_seconds"],
            "ratios": ratios,
            "ours": ours,
            "trl": theirs,
            "steps": steps,
            "batch": BATCH,
            "memory_model": memory_model.name,
            "memory_mib": memory,
            "load_end": os.getloadavg()[0],
        }
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
