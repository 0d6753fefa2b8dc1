"""The CLIP demo's pretrained base: the source corpus, contrastive pretraining with modaltune itself,
and the cache it is kept in (under `clip_key.base_key`) so that a later demo skips both."""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from modaltune.run import user_cache_dir
from modaltune.testing.demo.clip_key import base_key
from modaltune.testing.demo.clip_specs import BaseSpec


@dataclass
class BaseModel:
    """The pretrained base: its run directory in the cache, and how it came about."""

    run_dir: Path
    cached: bool
    info: dict[str, Any]

    @property
    def model(self) -> Path:
        return self.run_dir / "model"


def base_dir(spec: BaseSpec) -> Path:
    """Where the base model for ``spec`` is cached."""
    return user_cache_dir() / "demo-base" / base_key(spec)


def cached_base(spec: BaseSpec, *, console: Console) -> BaseModel | None:
    """The cached base model for ``spec`` (saying so), or None when there is none yet."""
    final = base_dir(spec)
    if not (final / "demo_base.json").is_file():
        return None
    info = json.loads((final / "demo_base.json").read_text())
    console.print(
        f"reusing the cached base model {final} (pretrained in "
        f"{info['pretrain_seconds']:.0f}s on {info['source_rows']} captions): "
        "skipping source corpus and pretraining"
    )
    return BaseModel(final, cached=True, info=info)


def ensure_base_model(spec: BaseSpec, source_dir: Path, *, console: Console, timings: dict[str, float]) -> BaseModel:
    """The cached base model for ``spec``, pretraining it first (into the cache) when there is none."""
    base = cached_base(spec, console=console)
    if base is not None:
        timings["source data"] = timings["pretraining"] = 0.0
        return base
    return build_base(spec, source_dir, console=console, timings=timings)


def pretrain_base(spec: BaseSpec, source_dir: Path, *, console: Console) -> dict[str, Any]:
    """In a worker process: `build_base`, its progress as lines in ``console``; what the demo needs of it."""
    import signal
    import sys

    import torch

    # Terminated (the demo failed elsewhere, or was interrupted) before the training loop takes SIGTERM
    # over: end through SystemExit all the same, so build_base removes its half-built directory.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    timings: dict[str, float] = {}
    base = build_base(spec, source_dir, console=console, timings=timings, progress=LineProgress(console))
    return {"run_dir": str(base.run_dir), "info": base.info, "timings": timings, "threads": torch.get_num_threads()}


class LineProgress:
    """The training loop's progress as a line every tenth of the run (for a log file, where a live bar is
    not drawn)."""

    def __init__(self, console: Console, description: str = "pretraining") -> None:
        self.console, self.description = console, description
        self._total, self._next, self._started = 0, 0, 0.0

    def start(self, total: int, completed: int) -> None:
        self._total, self._next, self._started = total, completed, time.perf_counter()
        self.console.print(f"{self.description}: {total} steps")

    def advance(self, step: int, loss: float) -> None:
        if step >= self._next or step == self._total:
            self.console.print(
                f"{self.description}: step {step}/{self._total} · loss {loss:.4f} · "
                f"{time.perf_counter() - self._started:.0f}s"
            )
            self._next = step + max(1, self._total // 10)

    def stop(self) -> None:
        self.console.print(f"{self.description}: done in {time.perf_counter() - self._started:.0f}s")


def build_base(
    spec: BaseSpec, source_dir: Path, *, console: Console, timings: dict[str, float], progress: Any = None
) -> BaseModel:
    """Write the source corpus and pretrain the base model for ``spec`` into the cache."""
    key = base_key(spec)
    final = base_dir(spec)
    tick = time.perf_counter()
    manifest = write_source_corpus(spec, source_dir)
    timings["source data"] = time.perf_counter() - tick
    console.print(f"source corpus: {spec.captions} captioned {spec.image_size}px images in {source_dir}")

    # Built beside its final place and renamed in one step: an interrupted pretraining never
    # leaves a directory that a later demo would take for a finished base model.
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch = final.parent / f".{key}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        tick = time.perf_counter()
        info = pretrain(spec, manifest, scratch, console=console, progress=progress)
        timings["pretraining"] = info["pretrain_seconds"] = time.perf_counter() - tick
        (scratch / "demo_base.json").write_text(json.dumps(info, indent=2) + "\n")
        try:
            os.rename(scratch, final)
        except OSError:
            if not (final / "demo_base.json").is_file():
                raise
            shutil.rmtree(scratch)  # another demo finished the same base first: use that one
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    console.print(f"pretrained base model cached in {final} ({timings['pretraining']:.0f}s)")
    return BaseModel(final, cached=False, info=json.loads((final / "demo_base.json").read_text()))


def write_source_corpus(spec: BaseSpec, source_dir: Path) -> Path:
    """The source image-caption corpus as ``images/*.png`` + ``captions.jsonl``; returns the manifest."""
    from modaltune.testing.synthetic import write_caption_corpus

    return write_caption_corpus(
        source_dir, spec.captions, seed=spec.seed, image_size=spec.image_size, styles=spec.styles
    )


def pretrain(
    spec: BaseSpec, manifest: Path, run_dir: Path, *, console: Console, progress: Any = None
) -> dict[str, Any]:
    """Build a random CLIP and train it contrastively on ``manifest``; ``run_dir/model`` is the result."""
    from modaltune.api import train
    from modaltune.config import build_config
    from modaltune.progress import TrainingProgress
    from modaltune.testing.synthetic import vocabulary_texts
    from modaltune.testing.tiny_clip import build_clip

    # The tokenizer learns the caption words (and the vocabulary's), so captions and prompts are
    # whole-word tokens rather than letter soup.
    captions = [json.loads(line)["text"] for line in manifest.read_text().splitlines() if line.strip()]
    init = build_clip(
        run_dir / "init",
        texts=vocabulary_texts() + captions,
        seed=spec.seed,
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        layers=spec.layers,
        heads=spec.heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
    )
    # Strategy `full` from the random init built above (`scratch` would draw a second init).
    cfg = build_config(
        task="retrieve",
        strategy="full",
        model=str(init),
        data=str(manifest),
        output=str(run_dir),
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lr,
        seed=spec.seed,
        val_fraction=spec.val_fraction,
        warmup_ratio=0.05,
        weight_decay=0.1,
        keep_last=1,
        zero_shot_baseline=False,  # the baseline of a random model is known: chance
    )
    metrics = train(cfg, progress=progress or TrainingProgress("pretraining (retrieve)", console))
    # Only model/ and the record of how it was made are worth keeping in the cache.
    shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    shutil.rmtree(init)
    return {
        "key_spec": asdict(spec),
        "source_rows": metrics["run"]["train_rows"] + metrics["run"]["val_rows"],
        "retrieval": {k: v for k, v in metrics.items() if isinstance(v, float)},
        "steps": metrics["run"]["steps"],
    }
