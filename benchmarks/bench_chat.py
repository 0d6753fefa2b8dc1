"""Chat SFT speed: modaltune's LoRA training vs TRL's SFTTrainer on the same model, data and masking.

Both sides train the same tiny-but-not-trivial LLaVA (CLIP tower, 4-layer Llama of width 256) with
the same PEFT LoRA (every linear layer of the language model, r=8) on the same synthetic
conversations, batched by the same collator (modaltune's chat task: the model's chat template,
labels on the assistant turns only), for the same number of optimizer steps at the same batch size,
learning rate and gradient clipping. Rounds alternate (ours, TRL, ours, TRL, ...) so machine load
hits both alike; the printed ratio is the median of the per-round ratios of trained target tokens
per second (labels that are not -100, after the shift). Peak memory: the peak resident set size of
a fresh process that trains LoRA, and one that trains every parameter (``full``), a few steps each.

    .venv/bin/python benchmarks/bench_chat.py [--rounds 3] [--steps 16] [--quick]
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


def build(root: Path) -> tuple[Path, Path]:
    from modaltune.testing.synthetic_chat import chat_texts, write_llava_json
    from modaltune.testing.tiny_chat import TinyChatSize, build_llava

    model = root / "llava"
    if not (model / "config.json").exists():
        size = TinyChatSize(hidden=256, layers=4, heads=4, intermediate=1024, image_size=32, patch_size=8)
        build_llava(model, texts=chat_texts(), seed=0, size=size)
    data = write_llava_json(root / "data", 96, seed=0, image_size=32)
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


def target_tokens(task: Any, loaded: Any, rows: list[Any], steps: int) -> int:
    """Target tokens the first ``steps`` batches of ``BATCH`` rows (in order, cycling) hold."""
    items = _decoded(rows)
    total = 0
    loaded.model.train()
    for step in range(steps):
        batch = [items[(step * BATCH + i) % len(items)] for i in range(BATCH)]
        total += int(task.loss_weight(task.collate(loaded, batch)))
    return total


def run_ours(model: Path, data: Path, steps: int, strategy: str = "lora") -> dict[str, float]:
    from modaltune.config import build_config
    from modaltune.run import RunDir
    from modaltune.trainer.loop import fit

    task, loaded, rows = _setup(model, data, strategy)
    out = Path(tempfile.mkdtemp(prefix="bench-chat-ours-"))
    cfg = build_config(task="chat", model=str(model), data=str(data), strategy=strategy, epochs=100, max_steps=steps,
                       batch_size=BATCH, lr=LR, warmup_ratio=0.0, output=str(out), save_every=10_000,
                       eval_every=10_000, keep_last=1)
    tick = time.perf_counter()
    result = fit(cfg, task, loaded, rows, [], RunDir(out).create())
    seconds = time.perf_counter() - tick
    return {"seconds": seconds, "steps": result.state.step}


def run_trl(model: Path, data: Path, steps: int) -> dict[str, float]:
    import datasets
    from trl import SFTConfig, SFTTrainer

    task, loaded, rows = _setup(model, data, "lora")
    items = _decoded(rows)
    order = datasets.Dataset.from_dict({"index": list(range(len(items)))})

    def collate(batch: list[dict[str, int]]) -> dict[str, torch.Tensor]:
        return task.collate(loaded, [items[b["index"]] for b in batch])

    args = SFTConfig(output_dir=tempfile.mkdtemp(prefix="bench-chat-trl-"), per_device_train_batch_size=BATCH,
                     max_steps=steps, learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.01,
                     max_grad_norm=1.0, logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True,
                     remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True},
                     dataloader_num_workers=0, disable_tqdm=True, seed=0,
                     # SFTConfig defaults to bf16 autocast and gradient checkpointing; modaltune trains in
                     # fp32 without checkpointing unless asked, so both are off here (bf16 on this CPU is ~10x slower)
                     bf16=False, gradient_checkpointing=False)
    loaded.model.train()
    trainer = SFTTrainer(model=loaded.model.backbone, args=args, train_dataset=order, data_collator=collate,
                         processing_class=loaded.processor)
    tick = time.perf_counter()
    trainer.train()
    return {"seconds": time.perf_counter() - tick, "steps": trainer.state.global_step}


def _rss_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def training_memory(model: Path, data: Path, strategy: str, steps: int) -> dict[str, float]:
    """Resident memory while training: the process's RSS once the model is loaded (imports, data, weights)
    and the most it grows above that during ``steps`` steps (gradients, optimizer state, activations),
    sampled every 5 ms by a thread."""
    import threading

    from modaltune.config import build_config
    from modaltune.run import RunDir
    from modaltune.trainer.loop import fit

    task, loaded, rows = _setup(model, data, strategy)
    base = _rss_mib()
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.005)

    out = Path(tempfile.mkdtemp(prefix="bench-chat-mem-"))
    cfg = build_config(task="chat", model=str(model), data=str(data), strategy=strategy, epochs=100, max_steps=steps,
                       batch_size=BATCH, lr=LR, warmup_ratio=0.0, output=str(out), save_every=10_000,
                       eval_every=10_000, keep_last=1)
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    fit(cfg, task, loaded, rows, [], RunDir(out).create())
    done.set()
    watcher.join()
    return {"loaded_mib": base, "training_growth_mib": peak[0] - base}


def peak_memory(model: Path, data: Path, strategy: str, steps: int) -> dict[str, float]:
    """`training_memory` in a fresh process (so one strategy's memory does not hide the other's)."""
    here = str(Path(__file__).parent)
    code = (f"import sys, json, torch; torch.set_num_threads(1); sys.path.insert(0, {here!r}); import bench_chat;"
            f"from pathlib import Path; print(json.dumps(bench_chat.training_memory(Path({str(model)!r}), "
            f"Path({str(data)!r}), {strategy!r}, {steps})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="1 round of 3 steps (a smoke test)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    rounds, steps = (1, 3) if args.quick else (args.rounds, args.steps)
    torch.set_num_threads(1)
    # modaltune's loop flushes subnormal floats on CPU (they made steps ~10x slower here); the same for
    # TRL, so the ratio compares the training loops, not this CPU quirk.
    torch.set_flush_denormal(True)
    root = Path(tempfile.mkdtemp(prefix="bench-chat-"))
    model, data = build(root)
    task, loaded, rows = _setup(model, data, "lora")
    tokens = target_tokens(task, loaded, rows, steps)
    trainable = sum(p.numel() for p in loaded.model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in loaded.model.parameters())
    del loaded
    print(f"model: tiny LLaVA, {total / 1e6:.1f} M parameters, LoRA trains {trainable / 1e3:.0f} K; "
          f"{len(rows)} conversations, batch {BATCH}, {steps} steps = {tokens} target tokens per run; "
          f"load {os.getloadavg()[0]:.1f}")
    ratios, ours_tps, trl_tps = [], [], []
    for r in range(rounds):
        ours = run_ours(model, data, steps)
        theirs = run_trl(model, data, steps)
        assert ours["steps"] == theirs["steps"] == steps, (ours, theirs)
        a, b = tokens / ours["seconds"], tokens / theirs["seconds"]
        ours_tps.append(a)
        trl_tps.append(b)
        ratios.append(a / b)
        print(f"round {r + 1}: modaltune {a:.0f} tok/s ({ours['seconds']:.2f} s), TRL SFTTrainer {b:.0f} tok/s "
              f"({theirs['seconds']:.2f} s), ratio {a / b:.2f}")
    memory = {strategy: peak_memory(model, data, strategy, min(steps, 4)) for strategy in ("lora", "full")}
    result = {"ratio_median": statistics.median(ratios), "ratios": ratios, "ours_tokens_per_s": ours_tps,
              "trl_tokens_per_s": trl_tps, "tokens_per_run": tokens, "steps": steps, "batch": BATCH,
              "memory_mib": memory, "load_end": os.getloadavg()[0]}
    print(f"median ratio (modaltune / TRL, trained target tokens per second): {result['ratio_median']:.2f}")
    print("memory: " + "; ".join(f"{k}: {v['loaded_mib']:.0f} MiB loaded, +{v['training_growth_mib']:.0f} MiB while "
                                 "training" for k, v in memory.items()) + f"; load {result['load_end']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
