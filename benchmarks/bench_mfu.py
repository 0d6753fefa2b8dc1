"""Model-FLOPs utilisation of CLIP full fine-tuning through modaltune's trainer, on a GPU (issue 4).

    .venv/bin/python benchmarks/bench_mfu.py [--batch 128] [--steps 30] [--peak-tflops 989]

Trains a CLIP with ViT-B/32-like dimensions (random init) on synthetic image-caption pairs with
``modaltune train`` (bf16 autocast, SDPA attention, DataLoader workers), measures samples/s from
the trainer's own step times after warm-up, and divides the model FLOPs per second by the GPU's
peak dense bf16 FLOPs. Model FLOPs per sample follow the PaLM appendix: per token 6 x (non-embedding
parameters of its tower) + 12 x layers x width x sequence length (attention), image and text
towers added. Captions are padded to the longest in their batch, so the text tower's sequence is
the mean of that padded length over batches of the training captions, not the position limit.
Without a GPU it says so and stops (``--cpu`` measures here anyway, against a peak you pass).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from _common import B32, build_model, caption_data, captions_of, machine  # noqa: E402

#: Dense bf16 peak TFLOPS by device-name fragment (no sparsity).
PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "V100": 125.0}


def flops_per_sample(config, text_tokens: float | None = None) -> float:
    """Training FLOPs (forward + backward) per image-caption pair; ``text_tokens`` is the caption
    sequence length the text tower runs at (default: its position limit)."""
    total = 0.0
    vision, text = config.vision_config, config.text_config
    for tower, tokens in ((vision, (vision.image_size // vision.patch_size) ** 2 + 1),
                          (text, text_tokens or text.max_position_embeddings)):
        width, layers, ffn = tower.hidden_size, tower.num_hidden_layers, tower.intermediate_size
        params = layers * (4 * width * width + 2 * width * ffn)  # attention projections + MLP
        total += tokens * (6 * params + 12 * layers * width * tokens)
    return total


def padded_text_length(tokenizer, captions: list[str], batch: int, max_length: int, seed: int = 0) -> float:
    """Mean length captions are padded to (the longest of each batch), over shuffled batches."""
    import random

    lengths = [len(ids) for ids in tokenizer(captions, truncation=True, max_length=max_length)["input_ids"]]
    random.Random(seed).shuffle(lengths)
    batches = [lengths[i:i + batch] for i in range(0, len(lengths), batch)]
    return sum(max(b) for b in batches) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--cpu", action="store_true", help="measure without a GPU (needs --peak-tflops)")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    print(f"machine: {machine()}")
    if not torch.cuda.is_available() and not args.cpu:
        print("no GPU here: nothing measured (run on a GPU machine, or pass --cpu --peak-tflops X)")
        return
    peak = args.peak_tflops
    if peak is None and torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        peak = next((v for k, v in PEAKS.items() if k in name), None)
    if peak is None:
        raise SystemExit("unknown peak FLOPS for this device: pass --peak-tflops")

    from modaltune.api import train
    from modaltune.config import build_config

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-mfu-"))
    data = caption_data(work, args.batch * (args.steps + 2), B32["image_size"])
    model = build_model(work, captions_of(data), **B32)
    cfg = build_config(task="retrieve", model=str(model), data=str(data), output=str(work / "run"), strategy="full",
                       epochs=1, max_steps=args.steps, batch_size=args.batch, lr=1e-5,
                       precision="bf16" if torch.cuda.is_available() else "fp32", zero_shot_baseline=False,
                       val_fraction=0.01, keep_last=1, feature_cache=False)
    train(cfg)
    history = [json.loads(line) for line in (work / "run" / "history.jsonl").read_text().splitlines()]
    times = [h["elapsed"] for h in history if h["kind"] == "step"]
    rate = (len(times) - args.warmup) * args.batch / (times[-1] - times[args.warmup - 1])
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(model)
    text_tokens = padded_text_length(AutoTokenizer.from_pretrained(model), captions_of(data), args.batch,
                                     config.text_config.max_position_embeddings)
    per_sample = flops_per_sample(config, text_tokens)
    achieved = rate * per_sample / 1e12
    print(f"CLIP {B32}: {per_sample / 1e9:.1f} GFLOPs per training sample (captions padded to "
          f"{text_tokens:.1f} tokens on average); batch {args.batch}, {len(times)} steps ({args.warmup} warm-up)")
    print(f"{rate:.1f} samples/s -> {achieved:.1f} TFLOPS = {100 * achieved / peak:.1f}% MFU (peak {peak:g} TFLOPS)")


if __name__ == "__main__":
    main()
