"""What the loop does around the optimisation itself, as callbacks: progress, early stopping,
SIGTERM, restoring the best weights, and the fault injection the crash-resume tests use.

The loop calls every callback at the same points (``Event``) and knows none of them by name; a
callback reads the loop's ``TrainerState`` and may ask the loop to stop, to checkpoint now, or to
exit once the checkpoint is written.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from modaltune.trainer import checkpoint as ckpt

#: Fault injection for the crash-resume tests: SIGKILL this process after this many micro-batches.
KILL_ENV = "MODALTUNE_FAULT_KILL_AT_MICROSTEP"
EXIT_SIGTERM = 143


@dataclass
class Event:
    """Where the loop is: its state, and what the callbacks asked of it so far."""

    state: ckpt.TrainerState
    total_steps: int
    loss: float | None = None  # the last micro-batch's loss
    stop: bool = False  # finish after this step (early stopping)
    checkpoint: bool = False  # write a checkpoint after this step even if none is due
    exit_code: int | None = None  # leave the process with this code once the checkpoint is written
    metrics: dict[str, Any] = field(default_factory=dict)
    finished: bool = False  # the step plan ran to its end (or early stopping ended it), no exception
    restored_best: bool = False  # the best-validated weights were put back at the end


class Callback:
    """Hooks the loop calls; each does nothing unless overridden."""

    def on_fit_start(self, event: Event) -> None: ...

    def on_micro_batch_end(self, event: Event) -> None: ...

    def on_step_end(self, event: Event) -> None: ...

    def on_evaluate(self, event: Event) -> None:
        """After a validation pass; ``event.metrics`` holds its metrics, the state its best so far."""

    def on_fit_end(self, event: Event) -> None: ...


class EarlyStopping(Callback):
    """Stop once validation has not improved for ``patience`` evaluations in a row."""

    def __init__(self, patience: int) -> None:
        self.patience = patience

    def on_evaluate(self, event: Event) -> None:
        if event.state.evals_without_improvement >= self.patience:
            event.stop = True


class ProgressBar(Callback):
    """Drives a progress display with ``start(total, done)``, ``advance(step, loss)``, ``stop()``."""

    def __init__(self, progress: Any) -> None:
        self.progress = progress

    def on_fit_start(self, event: Event) -> None:
        self.progress.start(event.total_steps, event.state.step)

    def on_step_end(self, event: Event) -> None:
        self.progress.advance(event.state.step, event.loss if event.loss is not None else float("nan"))

    def on_fit_end(self, event: Event) -> None:
        self.progress.stop()


class Terminate(Callback):
    """SIGTERM: finish the optimizer step, checkpoint, and exit 143 (resumable with --resume)."""

    def __init__(self) -> None:
        self._event: Event | None = None
        self._previous: Any = None

    def on_fit_start(self, event: Event) -> None:
        self._event = event
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        # Whenever it arrives (mid-step, during an evaluation), the loop sees it at the step's end.
        if self._event is not None:
            self._event.checkpoint, self._event.exit_code = True, EXIT_SIGTERM

    def on_fit_end(self, event: Event) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class FaultInjection(Callback):
    """SIGKILL this process after ``kill_at`` micro-batches: how the tests prove exact resume."""

    def __init__(self, kill_at: int) -> None:
        self.kill_at, self.seen = kill_at, 0

    def on_micro_batch_end(self, event: Event) -> None:
        self.seen += 1
        if self.seen == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    @classmethod
    def from_env(cls) -> FaultInjection | None:
        kill_at = int(os.environ.get(KILL_ENV, "0") or 0)
        return cls(kill_at) if kill_at else None


class RestoreBest(Callback):
    """At the end of a finished fit, put back the weights of the best validation step (kept on disk
    as a checkpoint protected from rotation) when that is not the last step."""

    def __init__(self, checkpoints: Path, model: nn.Module) -> None:
        self.checkpoints, self.model = checkpoints, model

    def on_fit_end(self, event: Event) -> None:
        state = event.state
        if not event.finished or state.best_step is None or state.best_step == state.step:
            return
        path = self.checkpoints / f"{ckpt.PREFIX}{state.best_step:08d}"
        if path.is_dir():
            ckpt.load_weights(path, self.model)
            event.restored_best = True


def default_callbacks(early_stopping: int | None, progress: Any, *,
                      restore_best: RestoreBest | None = None) -> list[Callback]:
    """The callbacks every fit runs with, in the order they are called."""
    callbacks: list[Callback] = [Terminate()]
    if restore_best is not None:
        callbacks.append(restore_best)
    if early_stopping is not None:
        callbacks.append(EarlyStopping(early_stopping))
    if progress is not None:
        callbacks.append(ProgressBar(progress))
    fault = FaultInjection.from_env()
    if fault is not None:
        callbacks.append(fault)
    return callbacks
