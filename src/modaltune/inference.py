"""Run a task's model over rows without gradients: shared by training-time eval, `eval` and `predict`."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch

from modaltune.data.rows import Row
from modaltune.tasks.base import Loaded, Task
from modaltune.trainer.batches import MediaDataset, chunk, loader


def model_device(loaded: Loaded) -> torch.device:
    return next(loaded.model.parameters()).device


@torch.no_grad()
def compute_outputs(
    task: Task, loaded: Loaded, rows: Sequence[Row], *, batch_size: int = 64, workers: int = 0,
    autocast: Any = None,
) -> dict[str, torch.Tensor]:
    """Concatenated per-row outputs (``task.outputs``) over ``rows``, in order."""
    model = loaded.model
    was_training = model.training
    model.eval()
    device = model_device(loaded)
    parts: dict[str, list[torch.Tensor]] = {}
    batches = chunk([(0, i) for i in range(len(rows))], batch_size)
    try:
        dataset = MediaDataset(rows, media_options=loaded.media_options)
        for batch in loader(dataset, batches, lambda items: task.collate(loaded, items), workers=workers):
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast() if autocast is not None else nullcontext():
                out = task.outputs(loaded, batch)
            for key, value in _on_cpu(out).items():
                parts.setdefault(key, []).append(value)
    finally:
        model.train(was_training)
    return {k: torch.cat(v) for k, v in parts.items()}


def _on_cpu(outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Generated token ids stay integers; everything else is compared in fp32.
    return {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu() for k, v in outputs.items()}


@torch.no_grad()
def predict_items(task: Task, loaded: Loaded, items: Sequence[tuple[Row, dict[str, Any]]]) -> list[dict]:
    """Predictions for examples whose media are decoded already, as one batch: the server's path, where
    uploads are decoded and checked as they arrive and then batched across requests."""
    model = loaded.model
    was_training = model.training
    model.eval()
    try:
        device = model_device(loaded)
        batch = {k: v.to(device) for k, v in task.collate(loaded, list(items)).items()}
        outputs = _on_cpu(task.outputs(loaded, batch))
    finally:
        model.train(was_training)
    return task.predict(loaded, outputs, [row for row, _ in items])


def eval_rows(task: Task, rows: Sequence[Row]) -> list[Row]:
    """The rows a task scores: a task may merge rows first (captioning: one row per image holding all
    of its reference captions, so each image is captioned once)."""
    return list(task.eval_rows(list(rows)))


@torch.no_grad()
def evaluate_rows(task: Task, loaded: Loaded, rows: Sequence[Row], **kwargs: Any) -> dict[str, Any]:
    rows = eval_rows(task, rows)
    return task.evaluate(loaded, compute_outputs(task, loaded, rows, **kwargs), rows)


@torch.no_grad()
def predict_rows(task: Task, loaded: Loaded, rows: Sequence[Row], **kwargs: Any) -> list[dict]:
    return task.predict(loaded, compute_outputs(task, loaded, rows, **kwargs), list(rows))

