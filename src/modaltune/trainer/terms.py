"""What the loop minimises: the task's loss (named parts) plus loss terms such as rehearsal and L2-SP.

A task's ``loss`` returns a scalar or ``{"loss": total, "<part>": ...}`` (detection: class, L1,
GIoU). A term adds to the total from the same micro-batch; the loop sums them without knowing
what they are and logs every part and term to ``history.jsonl``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from modaltune.forgetting import Anchor
    from modaltune.tasks.base import Loaded, Task

#: A micro-batch as the loop collates it: "target" rows, and "replay" rows when rehearsing.
Batch = Mapping[str, Mapping[str, torch.Tensor]]


def loss_parts(value: torch.Tensor | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A task's loss as named parts with the total under "loss" (a bare scalar is the total alone)."""
    if isinstance(value, torch.Tensor):
        return {"loss": value}
    if "loss" not in value:
        raise ValueError(f"a task's loss dict needs the total under 'loss'; got parts {sorted(value)}")
    return dict(value)


def part_key(name: str) -> str:
    """The history key of a task's loss part: "ce" → "loss_ce" ("loss" stays the total)."""
    return name if name.startswith("loss") else f"loss_{name}"


class LossTerm(ABC):
    """A term added to the target loss of every micro-batch, logged under ``name``."""

    name: str

    @abstractmethod
    def __call__(self, batch: Batch) -> torch.Tensor | None:
        """The term's value for this micro-batch, or None when it has nothing to add."""


class ReplayTerm(LossTerm):
    """Rehearsal: the old task's loss on the old rows mixed into the batch.

    Every example of the mixed batch weighs the same, normalised by the target examples, so the
    target part is exactly the loss without rehearsal (``--lr`` means the same) and the old rows
    add theirs on top.
    """

    name = "replay"

    def __init__(self, task: Task, loaded: Loaded) -> None:
        self.task, self.loaded = task, loaded

    def __call__(self, batch: Batch) -> torch.Tensor | None:
        if "replay" not in batch:
            return None
        n_target, n_old = batch_len(batch["target"]), batch_len(batch["replay"])
        old = loss_parts(self.task.loss(self.loaded, dict(batch["replay"])))["loss"]
        return (n_old / n_target) * old


class L2SPTerm(LossTerm):
    """L2-SP: ``strength/2 · ‖θ − θ_base‖²`` over the trainable parameters."""

    name = "l2sp"

    def __init__(self, anchor: Anchor, model: nn.Module, strength: float) -> None:
        self.anchor, self.model, self.strength = anchor, model, strength

    def __call__(self, batch: Batch) -> torch.Tensor:
        return self.anchor.l2sp_penalty(self.model, self.strength)


def batch_len(batch: Mapping[str, Any]) -> int:
    return int(next(iter(batch.values())).shape[0])
