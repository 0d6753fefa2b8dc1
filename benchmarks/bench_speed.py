"""Training and evaluation speed and memory, side by side in one run (issue 4).

    .venv/bin/python benchmarks/bench_speed.py [--steps 8] [--batch 8] [--quick]

1. full fine-tuning samples/s on a CLIP with ViT-B/32-like dimensions (random init), contrastive
   loss, same data, batch, optimizer and steps: modaltune vs Hugging Face ``Trainer`` vs a plain
   PyTorch loop. Rates are measured between the end of the warm-up steps and the last step.
2. peak memory (RSS) of LoRA vs full fine-tuning, each in its own process;
3. evaluation throughput (images/s, image and text embeddings) vs a plain transformers loop;
4. ``--precision bf16``, ``--grad-checkpointing`` and ``--compile`` on and off (modaltune).

``--quick`` shrinks the model to 4 blocks of width 256 (a smoke test of the script itself).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import B32, build_model, caption_data, captions_of, machine, peak_rss_mb  # noqa: E402

LR = 1e-5
WARMUP = 2


# --------------------------------------------------------------------------- the three trainers


def _rate(times: list[float], batch: int) -> float:
    """Samples/s between the end of warm-up and the last step (times: end of each step)."""
    span = times[-1] - times[WARMUP - 1]
    return (len(times) - WARMUP) * batch / span


def run_modaltune(model: Path, data: Path, out: Path, steps: int, batch: int, **extra) -> float:
    import shutil

    from modaltune.api import train
    from modaltune.config import build_config

    shutil.rmtree(out, ignore_errors=True)  # a rerun of the benchmark measures afresh
    cfg = build_config(task="retrieve", model=str(model), data=str(data), output=str(out), strategy="full",
                       epochs=1, max_steps=steps, batch_size=batch, lr=LR, warmup_ratio=0.0, keep_last=1,
                       zero_shot_baseline=False, val_fraction=0.05, feature_cache=False, **extra)
    train(cfg)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return _rate([h["elapsed"] for h in history if h["kind"] == "step"], batch)


def _rows(data: Path) -> list[tuple[Path, str]]:
    rows = []
    for line in data.read_text().splitlines():
        record = json.loads(line)
        rows.append((data.parent / record["image"], record["text"]))
    return rows


def _collate(processor):
    from modaltune.data import load_image

    def collate(items):
        images = [load_image(path) for path, _ in items]
        enc = processor(images=images, text=[t for _, t in items], padding="longest", truncation=True,
                        return_tensors="pt")
        return {"pixel_values": enc["pixel_values"], "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"], "return_loss": True}

    return collate


def run_hf_trainer(model_dir: Path, data: Path, out: Path, steps: int, batch: int) -> float:
    from transformers import AutoProcessor, CLIPModel, Trainer, TrainerCallback, TrainingArguments

    times: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter())

    model = CLIPModel.from_pretrained(model_dir)
    processor = AutoProcessor.from_pretrained(model_dir)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch, max_steps=steps, learning_rate=LR,
        weight_decay=0.01, lr_scheduler_type="cosine", warmup_steps=0, max_grad_norm=1.0, logging_strategy="no",
        save_strategy="no", report_to=[], dataloader_num_workers=0, remove_unused_columns=False, use_cpu=True,
        seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=_rows(data), data_collator=_collate(processor),
                      callbacks=[Clock()])
    trainer.train()
    return _rate(times, batch)


def run_plain(model_dir: Path, data: Path, steps: int, batch: int) -> float:
    from torch.utils.data import DataLoader
    from transformers import AutoProcessor, CLIPModel

    torch.manual_seed(0)
    model = CLIPModel.from_pretrained(model_dir).train()
    processor = AutoProcessor.from_pretrained(model_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    loader = DataLoader(_rows(data), batch_size=batch, shuffle=True, collate_fn=_collate(processor))
    times = []
    for step, batch_inputs in enumerate(loader):
        if step == steps:
            break
        loss = model(**batch_inputs).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter())
    return _rate(times, batch)


# --------------------------------------------------------------------------- memory, evaluation


def memory_child(strategy: str, model: str, data: str, out: str, steps: int, batch: int) -> None:
    """Run in a fresh process: train ``steps`` steps and print the process's peak RSS."""
    import shutil

    from modaltune.api import train
    from modaltune.config import build_config

    shutil.rmtree(out, ignore_errors=True)
    cfg = build_config(task="retrieve", model=model, data=data, output=out, strategy=strategy, epochs=1,
                       max_steps=steps, batch_size=batch, keep_last=1, zero_shot_baseline=False, val_fraction=0.05)
    train(cfg)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}))


def peak_memory(strategy: str, model: Path, data: Path, out: Path, steps: int, batch: int) -> float:
    result = subprocess.run(
        [sys.executable, __file__, "--memory-child", strategy, str(model), str(data), str(out), str(steps),
         str(batch)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def eval_rates(model_dir: Path, data: Path, batch: int = 64) -> tuple[float, float]:
    import torch.nn.functional as F
    from transformers import AutoProcessor, CLIPModel

    from modaltune.data import load_dataset
    from modaltune.inference import compute_outputs
    from modaltune.tasks.base import create_task

    rows, _ = load_dataset(data, require=("image", "text"))
    task = create_task("retrieve")
    loaded = task.load(model_dir)
    compute_outputs(task, loaded, rows[:batch], batch_size=batch)  # warm-up
    tick = time.perf_counter()
    compute_outputs(task, loaded, rows, batch_size=batch)
    ours = len(rows) / (time.perf_counter() - tick)

    from modaltune.data import load_image

    model = CLIPModel.from_pretrained(model_dir).eval()
    processor = AutoProcessor.from_pretrained(model_dir)
    pairs = _rows(data)

    @torch.no_grad()
    def plain(items):
        enc = processor(images=[load_image(p) for p, _ in items], text=[t for _, t in items], padding="longest",
                        truncation=True, return_tensors="pt")
        image = model.get_image_features(pixel_values=enc["pixel_values"]).pooler_output
        text = model.get_text_features(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).pooler_output
        return F.normalize(image, dim=-1), F.normalize(text, dim=-1)

    plain(pairs[:batch])
    tick = time.perf_counter()
    for start in range(0, len(pairs), batch):
        plain(pairs[start:start + batch])
    theirs = len(pairs) / (time.perf_counter() - tick)
    return ours, theirs


def data_path_rate(model_dir: Path, data: Path, batch: int, batches: int, workers: int) -> float:
    """Samples/s of decoding + the processor alone (the training loader, no model)."""
    from modaltune.data import load_dataset
    from modaltune.tasks.base import create_task
    from modaltune.trainer.batches import MediaDataset, chunk, loader

    rows, _ = load_dataset(data, require=("image", "text"))
    task = create_task("retrieve")
    loaded = task.load(model_dir)
    keys = chunk([(0, i) for i in range(min(len(rows), batch * batches))], batch)
    tick = time.perf_counter()
    n = sum(b["pixel_values"].shape[0] for b in loader(MediaDataset(rows), keys,
                                                         lambda items: task.collate(loaded, items), workers=workers))
    return n / (time.perf_counter() - tick)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds of section 1")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--memory-child", nargs=6, default=None)
    parser.add_argument("--sections", default="1,2,3,4,5", help="which measurements to run (1-5)")
    args = parser.parse_args()
    if args.memory_child:
        strategy, model, data, out, steps, batch = args.memory_child
        memory_child(strategy, model, data, out, int(steps), int(batch))
        return

    dims = dict(B32, hidden_size=256, layers=4, heads=4, image_size=64) if args.quick else B32
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-speed-"))
    data = caption_data(work, max(256, args.steps * args.batch * 2), dims["image_size"])
    model = build_model(work, captions_of(data), **dims)
    print(f"machine: {machine()}")
    print(f"model: CLIP {dims}; batch {args.batch}, {args.steps} steps ({WARMUP} warm-up), fp32, AdamW")

    sections = {int(x) for x in args.sections.split(",")}
    rates = {"modaltune": run_modaltune(model, data, work / "mt", args.steps, args.batch)}
    if 1 in sections:
        # Interleaved repeats: a slow spell of the machine hits every contender, and the median ratio
        # of each round is reported rather than one run's.
        runs: dict[str, list[float]] = {"modaltune": [], "hf_trainer": [], "plain_pytorch": []}
        for _ in range(args.repeats):
            runs["modaltune"].append(run_modaltune(model, data, work / "mt", args.steps, args.batch))
            runs["hf_trainer"].append(run_hf_trainer(model, data, work / "hf", args.steps, args.batch))
            runs["plain_pytorch"].append(run_plain(model, data, args.steps, args.batch))
        rates.update({name: statistics.median(values) for name, values in runs.items()})
        print(f"\n1. full fine-tuning, samples/s (median of {args.repeats} interleaved rounds)")
        for name, values in runs.items():
            print(f"   {name:14s} {rates[name]:8.2f}   rounds: {', '.join(f'{v:.2f}' for v in values)}")
        vs_hf = [m / h for m, h in zip(runs["modaltune"], runs["hf_trainer"])]
        vs_plain = [m / p for m, p in zip(runs["modaltune"], runs["plain_pytorch"])]
        print(f"   modaltune / HF Trainer = {statistics.median(vs_hf):.2f}x (target >= 1.0x; rounds "
              f"{', '.join(f'{r:.2f}' for r in vs_hf)}); modaltune / plain = {statistics.median(vs_plain):.2f}x")

    if 2 in sections:
        full = peak_memory("full", model, data, work / "mem-full", 3, args.batch)
        lora = peak_memory("lora", model, data, work / "mem-lora", 3, args.batch)
        print(f"\n2. peak RSS, 3 training steps: full {full:.0f} MB, LoRA {lora:.0f} MB -> "
              f"LoRA / full = {lora / full:.2f}x (target <= 0.5x)")

    if 3 in sections:
        ours, theirs = eval_rates(model, data)
        print(f"\n3. evaluation, images/s (image + text embeddings): modaltune {ours:.1f}, plain transformers "
              f"{theirs:.1f} -> {ours / theirs:.2f}x (target >= 1.0x)")

    if 5 in sections:
        for workers in (0, 1):
            rate = data_path_rate(model, data, args.batch, 16, workers)
            print(f"\n5. data path alone (decode + processor, {workers} worker(s)): {rate:.1f} samples/s = "
                  f"{rate / rates['modaltune']:.1f}x the training step's rate")

    if 4 in sections:
        print("\n4. modaltune options, samples/s (on / off)")
        base = rates["modaltune"]
        for name, extra in (("bf16", {"precision": "bf16"}), ("grad-checkpointing", {"grad_checkpointing": True}),
                            ("compile", {"compile": True})):
            try:
                rate = run_modaltune(model, data, work / f"mt-{name}", args.steps, args.batch, **extra)
                print(f"   {name:20s} {rate:8.2f} / {base:8.2f} = {rate / base:.2f}x")
            except Exception as exc:  # an option the platform cannot run is reported, not hidden
                print(f"   {name:20s} failed here: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")


if __name__ == "__main__":
    main()
