"""How one optimizer step's gradients are made, combined and applied: one object per engine, so
the training loop reads the same for a single process, modaltune's own data parallelism, FSDP2 and
DeepSpeed ZeRO (`trainer.zero.Zero`, beside the rest of the DeepSpeed code).

The loop owns what is common (the plan, each process's share and loss weight, logging, checkpoints);
an engine owns what differs: where the forward runs, how a backward is taken, how the step's
gradients are combined, clipped and applied, and what a checkpoint must gather from the processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from modaltune.trainer import distributed


class Engine:
    """One process, or several that each run their share of a micro-batch and sum their gradients
    once per optimizer step (`distributed.all_reduce_grads`)."""

    #: Whether every process runs a backward for every micro-batch, its share empty or not (with a
    #: zero weight): engines whose gradient collectives run during backward need every process there.
    lockstep = False

    def __init__(self, accelerator: Any, optimizer: torch.optim.Optimizer, trainable: Sequence[nn.Parameter],
                 procs: distributed.Processes) -> None:
        self.accelerator, self.optimizer, self.trainable, self.procs = accelerator, optimizer, trainable, procs

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(*args)

    def backward(self, loss: torch.Tensor, *, last: bool) -> None:
        """``loss`` already weighted for a sum over micro-batches and processes; ``last``: the step's
        last micro-batch."""
        self.accelerator.backward(loss)

    def idle_backward(self, loss: torch.Tensor, *, finite: bool, last: bool) -> None:
        """A lockstep engine's backward for a micro-batch this process has no rows of (or whose loss
        was not finite): it contributes nothing, but the others' collectives need it."""
        self.backward(loss * 0.0, last=last)

    def step(self, finite: bool, max_grad_norm: float | None) -> tuple[bool, float | None]:
        """Combine, clip and apply the step's gradients unless a loss was not finite (``finite`` is
        every process's verdict); returns whether the step was taken and the norm before clipping."""
        if finite and self.procs.several:
            distributed.all_reduce_grads(self._summed())
        grad_norm = None
        if finite and max_grad_norm is not None:
            grad_norm = self._clip(max_grad_norm)
            finite = math.isfinite(grad_norm)
        if finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return finite, grad_norm

    def _summed(self) -> Sequence[nn.Parameter]:
        """The parameters whose gradients the loop sums across processes."""
        return self.trainable

    def _clip(self, max_grad_norm: float) -> float:
        return float(self.accelerator.clip_grad_norm_(self.trainable, max_grad_norm))

    def evaluate(self, metrics: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Validation metrics on the main process (the others get them by broadcast)."""
        return metrics() if self.procs.main else {}

    def whole(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        """The trainable weights and optimizer state gathered whole for a checkpoint, when the main
        process's own model and optimizer do not hold them; every process must call it."""
        return None, None

    def finish(self, plain: nn.Module) -> None:
        """After the last step: the trained weights in ``plain``, the model the run exports."""

    def close(self) -> None:
        """Undo what the engine did to the model (also when the fit fails); safe to call twice."""


class ShardedEngine(Engine):
    """FSDP2 (`distributed.Sharded`): each block's parameters are gathered in its forward and its
    gradients reduce-scattered (summed) in backward; scalars left whole are summed by the loop."""

    lockstep = True

    def __init__(self, accelerator: Any, optimizer: torch.optim.Optimizer, trainable: Sequence[nn.Parameter],
                 procs: distributed.Processes, sharded: distributed.Sharded) -> None:
        super().__init__(accelerator, optimizer, trainable, procs)
        self.sharded = sharded

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return self.sharded.run(fn, *args)

    def _summed(self) -> Sequence[nn.Parameter]:
        return self.sharded.replicated

    def _clip(self, max_grad_norm: float) -> float:
        return distributed.clip_grad_norm(list(self.trainable), max_grad_norm)

    def evaluate(self, metrics: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        # Every process runs the same forwards: they gather the parameters together.
        out = self.sharded.run(metrics)
        self.sharded.reshard()
        return out

    def whole(self) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any] | None]:
        return self.sharded.full_trainable(), distributed.full_optimizer_state(self.optimizer)

    def finish(self, plain: nn.Module) -> None:
        self.sharded.copy_to(plain)
        plain.to(self.accelerator.device)
