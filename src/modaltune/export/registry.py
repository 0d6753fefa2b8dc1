"""How a task becomes ONNX graphs, and runs again from them: one ``OnnxExporter`` per task, registered
by task name with ``@register_onnx``.

An exporter has two halves. At export time (PyTorch present, the model loaded) it names the graphs
of a loaded model, with sample inputs for the parity check, and the learned state the runtime needs.
At prediction time (onnxruntime, no PyTorch model) it turns decoded media into the graphs' inputs and
their outputs into the task's outputs, which the task itself scores or predicts from, so an ONNX
prediction is ranked and worded exactly as the PyTorch one. A family that cannot be exported says
why with ``unsupported``; a task without an exporter is refused with the list of those that have one.
New families add a module to this package (found by package discovery) or call ``register_onnx``
from their own package.
"""

from __future__ import annotations

import importlib
import pkgutil
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from modaltune.errors import ModaltuneError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from modaltune.data.rows import Row
    from modaltune.export.onnx_predict import OnnxRuntime
    from modaltune.tasks.base import Loaded, Task

#: (row, {media kind: decoded value}) pairs, as the data layer yields them.
Items = list[tuple["Row", dict[str, Any]]]
Feeds = dict[str, np.ndarray]


class ExportError(ModaltuneError):
    """The model cannot be exported as asked (an unsupported task or head, a failed parity check)."""


@dataclass
class Graph:
    """One ONNX graph: the module traced, its input and output names, the axes that stay dynamic,
    and sample inputs (the first one is traced; each is checked against PyTorch afterwards)."""

    name: str  # file stem: <name>.onnx
    module: nn.Module
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: Mapping[str, tuple[int, ...]]
    samples: list[dict[str, torch.Tensor]]
    #: Applied while tracing only (the PyTorch reference of the parity check runs without it).
    patch: Callable[[], AbstractContextManager[Any]] = field(default=nullcontext)


class OnnxExporter(ABC):
    """The ONNX export of one task. Subclasses set ``task`` and implement the abstract methods."""

    task: ClassVar[str]

    # ---- export time ---------------------------------------------------------------------------

    def unsupported(self, task: Task, loaded: Loaded) -> str | None:
        """Why this model cannot be exported (None: it can)."""
        return None

    @abstractmethod
    def graphs(self, task: Task, loaded: Loaded, items: Items) -> list[Graph]:
        """The graphs of ``loaded`` with sample inputs made from ``items`` (3 or more decoded rows)."""

    @abstractmethod
    def state(self, task: Task, loaded: Loaded) -> dict[str, Any]:
        """What the runtime needs besides the graphs and the processor (JSON-able)."""

    def sample_rows(self, loaded: Loaded) -> Items:
        """Inputs for the parity check when the run's own validation data cannot be read."""
        raise ExportError(f"task {self.task}: no validation data to check the export on, and no synthetic "
                          "inputs for it; export from a run directory whose data is still in place")

    # ---- prediction time (no PyTorch model) ---------------------------------------------------

    @abstractmethod
    def run(self, runtime: OnnxRuntime, items: Items, options: dict[str, Any]) -> dict[str, np.ndarray]:
        """The task's outputs (``logits``, ``media_embeds`` …) for decoded ``items``, through the graphs;
        ``options`` are the prediction's (``labels``, ``texts``), empty when scoring."""

    def task_options(self, runtime: OnnxRuntime, options: dict[str, Any]) -> dict[str, Any]:
        """Options of the task object the runtime predicts and scores with."""
        return {}

    def predict(self, runtime: OnnxRuntime, outputs: dict[str, np.ndarray], rows: list[Row],
                options: dict[str, Any]) -> list[dict]:
        """Predictions from ``run``'s outputs: by default the task's own ``predict``."""
        import torch

        task, loaded = runtime.task_and_state(options)
        return task.predict(loaded, {k: torch.from_numpy(v) for k, v in outputs.items()}, rows)


_EXPORTERS: dict[str, OnnxExporter] = {}
_discovered = False


def register_onnx(cls: type[OnnxExporter]) -> type[OnnxExporter]:
    """Class decorator: the ONNX exporter of task ``cls.task`` (a task claimed twice is an error)."""
    if cls.task in _EXPORTERS:
        raise ValueError(f"task {cls.task!r} already has the ONNX exporter {type(_EXPORTERS[cls.task]).__name__}")
    _EXPORTERS[cls.task] = cls()
    return cls


def exporter_for(task: str) -> OnnxExporter:
    _discover()
    if task not in _EXPORTERS:
        have = ", ".join(sorted(name for name, e in _EXPORTERS.items() if not isinstance(e, NotExported)))
        raise ExportError(f"task {task} has no ONNX export; tasks that have one: {have}. A family adds one "
                          "with @register_onnx (modaltune.export.registry)")
    return _EXPORTERS[task]


def onnx_tasks() -> list[str]:
    _discover()
    return sorted(_EXPORTERS)


class NotExported(OnnxExporter):
    """A task that is known not to export, with the reason (``unsupported`` always answers)."""

    reason: ClassVar[str]

    def unsupported(self, task: Task, loaded: Loaded) -> str | None:
        return self.reason

    def graphs(self, task: Task, loaded: Loaded, items: Items) -> list[Graph]:
        raise ExportError(self.reason)

    def state(self, task: Task, loaded: Loaded) -> dict[str, Any]:
        raise ExportError(self.reason)

    def run(self, runtime: OnnxRuntime, items: Items, options: dict[str, Any]) -> dict[str, np.ndarray]:
        raise ExportError(self.reason)


def _discover() -> None:
    """Import every module of this package once (each registers its exporters): no hand-kept list."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    import modaltune.export as package

    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in ("registry", "onnx_export", "onnx_predict") and not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


T = TypeVar("T")


def batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
