"""Running an ONNX export (``modaltune export RUN --format onnx``) with onnxruntime: no PyTorch model
is loaded. Media are decoded by the same decoders and turned into inputs by the same processor as in
training; the graphs' outputs go to the task's own ``predict`` / ``evaluate``, so an answer is ranked
and worded as the PyTorch model's is."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modaltune.data.rows import Row
from modaltune.errors import ConfigError
from modaltune.export.registry import Items, OnnxExporter, batches, exporter_for

META_FILE = "modaltune_onnx.json"
#: Versions of the export layout this code reads.
FORMAT = 1


def is_onnx_export(path: str | Path) -> bool:
    return (Path(path) / META_FILE).is_file()


def read_export_meta(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise ConfigError(f"{directory} is not an ONNX export of modaltune (no {META_FILE}); make one with "
                          "`modaltune export RUN --format onnx`")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ConfigError(f"{path}: export format {meta.get('format')!r}, this modaltune reads format {FORMAT}")
    return dict(meta)


class OnnxRuntime:
    """An ONNX export ready to run: its metadata, processor and (lazily) one session per graph.
    ``variant`` picks the fp32 graphs or, where the export has them, the int8 ones."""

    def __init__(self, directory: str | Path, *, variant: str = "fp32", meta: dict[str, Any] | None = None) -> None:
        self.directory = Path(directory)
        self.meta = meta if meta is not None else read_export_meta(directory)
        self.variant = variant
        self.exporter: OnnxExporter = exporter_for(self.meta["task"])
        self._sessions: dict[str, Any] = {}
        self._processor: Any = None
        #: What an exporter reads once per runtime (a model's config, say), by its own keys.
        self.cache: dict[str, Any] = {}
        missing = [name for name, graph in self.meta["graphs"].items() if variant not in graph["files"]]
        if missing:
            raise ConfigError(f"{self.directory}: no {variant} graph for {', '.join(missing)} "
                              f"(export with --quantize int8 to get int8 graphs)")

    @property
    def state(self) -> dict[str, Any]:
        return dict(self.meta["state"])

    @property
    def processor(self) -> Any:
        if self._processor is None:
            import transformers

            self._processor = getattr(transformers, self.meta["processor_class"]).from_pretrained(self.directory)
        return self._processor

    def session(self, name: str) -> Any:
        if name not in self._sessions:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3  # warnings about unused initialisers are noise here
            file = self.directory / self.meta["graphs"][name]["files"][self.variant]
            self._sessions[name] = ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
        return self._sessions[name]

    def run_graph(self, name: str, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Graph ``name`` on ``inputs`` (numpy arrays or tensors; those the graph does not read are left out)."""
        session = self.session(name)
        feeds = {i.name: _array(inputs[i.name]) for i in session.get_inputs()}
        outputs = session.run(None, feeds)
        return {o.name: value for o, value in zip(session.get_outputs(), outputs)}

    # ---- the task's view -------------------------------------------------------------------------

    def task_and_state(self, options: dict[str, Any], **state: Any) -> tuple[Any, Any]:
        """The task object and a ``Loaded`` holding no model, only the processor and the learned state
        (with ``state`` laid over it): what a task's ``predict`` and ``evaluate`` read."""
        from torch import nn

        from modaltune.tasks.base import Loaded, create_task

        task = create_task(self.meta["task"], **self.exporter.task_options(self, options))
        return task, Loaded(model=nn.Module(), processor=self.processor, state={**self.state, **state},
                            media_options=dict(self.meta.get("media_options", {})))

    def items(self, rows: Sequence[Row]) -> Items:
        from modaltune.trainer.batches import MediaDataset

        dataset = MediaDataset(rows, media_options=dict(self.meta.get("media_options", {})))
        return [dataset[i] for i in range(len(dataset))]

    def outputs(self, rows: Sequence[Row], options: dict[str, Any] | None = None,
                batch_size: int = 16) -> dict[str, np.ndarray]:
        """The task's outputs for ``rows``, in order (media decoded ``batch_size`` rows at a time)."""
        parts: dict[str, list[np.ndarray]] = {}
        for chunk in batches(list(rows), batch_size):
            out = self.exporter.run(self, self.items(chunk), dict(options or {}))
            for key, value in out.items():
                parts.setdefault(key, []).append(value)
        return {k: np.concatenate(v) for k, v in parts.items()}

    def predict(self, rows: Sequence[Row], **options: Any) -> list[dict]:
        options = {k: v for k, v in options.items() if v is not None}
        return self.exporter.predict(self, self.outputs(rows, options), list(rows), options)

    def evaluate(self, rows: Sequence[Row], batch_size: int = 16) -> dict[str, Any]:
        import torch

        task, loaded = self.task_and_state({})
        rows = list(task.eval_rows(list(rows)))
        outputs = self.outputs(rows, batch_size=batch_size)
        return dict(task.evaluate(loaded, {k: torch.from_numpy(v) for k, v in outputs.items()}, rows))


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.ascontiguousarray(value)


def predict_onnx(directory: str | Path, rows: Sequence[Row], *, labels: list[str] | None = None,
                 texts: list[str] | None = None, variant: str = "fp32", **task_options: Any) -> list[dict]:
    """``modaltune predict EXPORT FILE...`` for an ONNX export: rows of media files (checked already)
    → one prediction per row, as ``modaltune predict RUN`` gives them; ``task_options`` are the
    task's own (detect: threshold, max_detections, save_images)."""
    from modaltune.data.fields import check_predict_rows
    from modaltune.tasks.base import task_class

    runtime = OnnxRuntime(directory, variant=variant)
    task_cls = task_class(runtime.meta["task"])
    check_predict_rows(task_cls.fields, task_cls.name, rows)
    return runtime.predict(rows, labels=labels, texts=texts, **task_options)
