"""``modaltune export RUN --format onnx``: a run's model as ONNX graphs beside the processor, labels and
metadata the runtime needs, checked against the PyTorch model before it is declared good.

The checks, all printed and kept in the export's ``modaltune_onnx.json``:

* graph parity: each graph on its sample inputs at batch 3 and batch 1 (and other image sizes or
  text lengths where they apply) against the PyTorch module, max |difference| of every output; over
  ``tolerance`` (1e-4) the export fails;
* the whole path: the run's validation rows through the runtime (decoding, processor, graphs, the
  task's scoring) against the PyTorch model on the same rows: largest output difference and the
  primary metric of each;
* ``--quantize int8``: onnxruntime dynamic quantisation (int8 weights, activations quantised on the
  fly) of every graph, with its output difference to fp32, the top-1 agreement with fp32 and the
  primary metric on the validation rows: what quantisation costs.
"""

from __future__ import annotations

import inspect
import json
import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from modaltune.data.rows import Row
from modaltune.errors import ConfigError
from modaltune.export.onnx_predict import FORMAT, META_FILE, OnnxRuntime
from modaltune.export.registry import ExportError, Graph, Items, OnnxExporter, exporter_for
from modaltune.run import resolve_model_dir
from modaltune.tasks.base import Loaded, Task

logger = logging.getLogger(__name__)

EXPORTERS = ("dynamo", "torchscript")
OPSET = 18
#: Graphs above this size keep their weights in a side file (protobuf's 2 GB limit).
_EXTERNAL_BYTES = 1_500_000_000


def export_onnx(run_or_model: str | Path, output: str | Path | None = None, *, quantize: str | None = None,
                exporter: str = "dynamo", tolerance: float = 1e-4, batch_size: int = 16) -> dict[str, Any]:
    """Export a run (or a saved modaltune model) to ``output`` (default ``RUN/onnx``); returns the report."""
    from modaltune.api import load_model

    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter {exporter!r}: use one of {', '.join(EXPORTERS)}")
    if quantize not in (None, "int8"):
        raise ConfigError(f"--quantize {quantize!r}: only int8 (onnxruntime dynamic quantisation) is supported")
    _require_onnx()
    source = Path(run_or_model)
    out = Path(output) if output is not None else source / "onnx"
    task, loaded = load_model(run_or_model)
    onnx_exporter = exporter_for(task.name)
    reason = onnx_exporter.unsupported(task, loaded)
    if reason is not None:
        raise ExportError(f"task {task.name}: {reason}")
    loaded.model.to("cpu").eval()
    rows, rows_from = _validation_rows(run_or_model)
    items = _sample_items(onnx_exporter, loaded, rows)
    if out.exists() and any(out.iterdir()):
        if not (out / META_FILE).is_file():
            raise ConfigError(f"--output {out} exists and is not an earlier ONNX export; choose an empty or new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    graphs = onnx_exporter.graphs(task, loaded, items)
    report: dict[str, Any] = {"exporter": exporter, "opset": OPSET, "tolerance": tolerance, "graphs": {}}
    for graph in graphs:
        file = out / f"{graph.name}.onnx"
        _export(graph, file, exporter)
        checks = _parity(graph, file)
        report["graphs"][graph.name] = {"files": {"fp32": file.name}, "inputs": list(graph.inputs),
                                        "outputs": list(graph.outputs), "checks": checks}
    report["seconds"] = round(time.perf_counter() - started, 2)
    worst = max(c["max_abs_diff"] for g in report["graphs"].values() for c in g["checks"])
    report["max_abs_diff"] = worst
    if worst > tolerance:
        bad = [f"{name} (batch {c['batch']}, {c['output']}): {c['max_abs_diff']:.3g}"
               for name, g in report["graphs"].items() for c in g["checks"] if c["max_abs_diff"] > tolerance]
        raise ExportError(f"the ONNX graphs ({exporter} exporter) differ from the PyTorch model by more than "
                          f"{tolerance:g}: {'; '.join(bad)}. Nothing usable was written to {out}"
                          + ("; try --exporter dynamo" if exporter == "torchscript" else ""))

    loaded.processor.save_pretrained(out)
    _save_config(run_or_model, out)
    meta: dict[str, Any] = {"format": FORMAT, "task": task.name, "processor_class": type(loaded.processor).__name__,
            "media_options": dict(loaded.media_options), "state": onnx_exporter.state(task, loaded),
            "graphs": {name: {k: v for k, v in g.items() if k != "checks"} for name, g in report["graphs"].items()},
            "source": str(resolve_model_dir(source).resolve())}
    _write_vocabulary(out, meta["state"])
    _write_meta(out, meta)  # the runtime reads it from here on

    if rows:
        report["validation"] = _pipeline(task, loaded, rows, rows_from, OnnxRuntime(out, meta=meta), batch_size)
    if quantize == "int8":
        report["int8"] = _quantize(out, meta, graphs, rows, task, loaded, batch_size)
    meta["report"] = report
    _write_meta(out, meta)
    return {"output": str(out), "task": task.name, **report}


def _require_onnx() -> None:
    missing = [name for name in ("onnx", "onnxruntime", "onnxscript") if _absent(name)]
    if missing:
        raise ConfigError(f"ONNX export needs {', '.join(missing)}: pip install 'modaltune[onnx]'")


def _absent(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


def _validation_rows(run_or_model: str | Path) -> tuple[list[Row], str | None]:
    """The run's validation rows, when its config and data can still be read."""
    from modaltune.api import _eval_rows
    from modaltune.errors import ModaltuneError
    from modaltune.run import RunDir

    if not RunDir(Path(run_or_model)).config.is_file():
        return [], None
    try:
        return _eval_rows(run_or_model, None, task=None, skip_bad=True), "the run's validation data"
    except (ModaltuneError, OSError) as exc:
        logger.warning("export: the run's validation data cannot be read (%s); checking on synthetic inputs", exc)
        return [], None


def _sample_items(exporter: OnnxExporter, loaded: Loaded, rows: list[Row]) -> Items:
    """Four decoded rows for the graph checks: from the validation data, else synthetic."""
    from modaltune.trainer.batches import MediaDataset

    if len(rows) >= 2:
        chosen = [rows[i % len(rows)] for i in range(4)]
        dataset = MediaDataset(chosen, media_options=loaded.media_options)
        return [dataset[i] for i in range(len(dataset))]
    return exporter.sample_rows(loaded)


def _export(graph: Graph, file: Path, exporter: str) -> None:
    sample = tuple(graph.samples[0][name] for name in graph.inputs)
    size = sum(p.numel() * p.element_size() for p in graph.module.parameters())
    graph.module.eval()
    with warnings.catch_warnings(), _quiet("torch.onnx"), graph.patch(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation chatter; the parity check is what counts
        if exporter == "dynamo":
            auto = torch.export.Dim.AUTO
            shapes: tuple[Any, ...] = tuple({axis: auto for axis in graph.dynamic.get(name, ())} or None
                                            for name in graph.inputs)
            if any(p.kind is p.VAR_POSITIONAL for p in inspect.signature(graph.module.forward).parameters.values()):
                shapes = (shapes,)  # torch.export sees forward(*inputs) as one tuple argument
            torch.onnx.export(graph.module, sample, str(file), input_names=list(graph.inputs),
                              output_names=list(graph.outputs), dynamo=True, dynamic_shapes=shapes, opset_version=OPSET,
                              external_data=size > _EXTERNAL_BYTES, verbose=False)
        else:
            axes = {name: {axis: f"{name}_{axis}" for axis in graph.dynamic.get(name, ())} for name in graph.inputs}
            axes.update({name: {0: "batch"} for name in graph.outputs})
            torch.onnx.export(graph.module, sample, str(file), input_names=list(graph.inputs),
                              output_names=list(graph.outputs), dynamo=False, dynamic_axes=axes, opset_version=17)


@contextmanager
def _quiet(name: str, prefix: str = "") -> Iterator[None]:
    """Below ERROR, drop what logger ``name`` (and its children) says, or with ``prefix`` only the
    records of that logger itself whose message starts with it."""
    target = logging.getLogger(None if name == "root" else name)

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not record.getMessage().startswith(prefix)

    previous = target.level
    if prefix:
        target.addFilter(keep)
    else:
        target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.removeFilter(keep)
        target.setLevel(previous)


def _session(file: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def _run(session: Any, feeds: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    values = session.run(None, {name: feeds[name].numpy() for name in names})
    return {o.name: v for o, v in zip(session.get_outputs(), values)}


def _parity(graph: Graph, file: Path) -> list[dict[str, Any]]:
    """Every sample through the graph and the PyTorch module: max |difference| per output."""
    session = _session(file)
    checks = []
    for sample in graph.samples:
        with torch.no_grad():
            expected = graph.module(*(sample[name] for name in graph.inputs))
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = _run(session, sample)
        batch = int(next(iter(sample.values())).shape[0])
        shape = {name: list(sample[name].shape) for name in graph.inputs}
        for name, value in zip(graph.outputs, expected):
            diff = float(np.abs(got[name] - value.float().numpy()).max())
            checks.append({"batch": batch, "shapes": shape, "output": name, "max_abs_diff": diff})
    return checks


def _pipeline(task: Task, loaded: Loaded, rows: list[Row], rows_from: str | None, runtime: OnnxRuntime,
              batch_size: int) -> dict[str, Any]:
    """The validation rows end to end through PyTorch and through the runtime."""
    from modaltune.inference import compute_outputs

    scored = list(task.eval_rows(list(rows)))
    expected = compute_outputs(task, loaded, scored, batch_size=batch_size)
    got = runtime.outputs(scored, batch_size=batch_size)
    diffs = {key: float(np.abs(got[key] - expected[key].numpy()).max())
             for key in got if key in expected and expected[key].is_floating_point()}
    metric = task.primary_metric
    pytorch = task.evaluate(loaded, expected, scored)[metric]
    onnx = runtime.evaluate(rows, batch_size=batch_size)[metric]
    return {"rows": len(scored), "from": rows_from, "metric": metric, "pytorch": pytorch, "onnx": onnx,
            "max_abs_diff": diffs}


def _quantize(out: Path, meta: dict[str, Any], graphs: list[Graph], rows: list[Row], task: Task, loaded: Loaded,
              batch_size: int) -> dict[str, Any]:
    """int8 twins of the graphs (onnxruntime dynamic quantisation) and what they change."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    report: dict[str, Any] = {"method": "onnxruntime dynamic quantization (int8 weights, QInt8)", "graphs": {}}
    for graph in graphs:
        fp32 = out / meta["graphs"][graph.name]["files"]["fp32"]
        int8 = out / f"{graph.name}.int8.onnx"
        # onnxruntime's shape pre-processing fails on the dynamo exporter's graphs; its advice to run it is dropped.
        with _quiet("root", "Please consider to run pre-processing"):
            quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
        meta["graphs"][graph.name]["files"]["int8"] = int8.name
        full, small = _session(fp32), _session(int8)
        checks = []
        for sample in graph.samples:
            a, b = _run(full, sample), _run(small, sample)
            for name in graph.outputs:
                check = {"batch": int(next(iter(sample.values())).shape[0]), "output": name,
                         "max_abs_diff_vs_fp32": float(np.abs(a[name] - b[name]).max())}
                if name == "logits":
                    check["top1_agreement"] = float((a[name].argmax(-1) == b[name].argmax(-1)).mean())
                checks.append(check)
        report["graphs"][graph.name] = {"bytes_fp32": fp32.stat().st_size, "bytes_int8": int8.stat().st_size,
                                        "checks": checks}
    _write_meta(out, meta)
    if rows:
        metric = task.primary_metric
        fp32_rt, int8_rt = OnnxRuntime(out, meta=meta), OnnxRuntime(out, variant="int8", meta=meta)
        scored = list(task.eval_rows(list(rows)))
        a, b = fp32_rt.outputs(scored, batch_size=batch_size), int8_rt.outputs(scored, batch_size=batch_size)
        validation: dict[str, Any] = {"rows": len(scored), "metric": metric,
                                      "fp32": fp32_rt.evaluate(rows, batch_size=batch_size)[metric],
                                      "int8": int8_rt.evaluate(rows, batch_size=batch_size)[metric],
                                      "max_abs_diff_vs_fp32": {k: float(np.abs(a[k] - b[k]).max()) for k in a}}
        if "logits" in a:
            validation["top1_agreement"] = float((a["logits"].argmax(-1) == b["logits"].argmax(-1)).mean())
        report["validation"] = validation
    return report


def _save_config(run_or_model: str | Path, out: Path) -> None:
    """The model's config.json (its labels, sizes): a reader of the export needs no other folder."""
    config = resolve_model_dir(run_or_model) / "config.json"
    if config.is_file():
        shutil.copyfile(config, out / "config.json")


def _write_vocabulary(out: Path, state: dict[str, Any]) -> None:
    """labels.txt / answers.txt / categories.txt, one per line in class-id order (the logits' columns)."""
    for key in ("labels", "answers", "categories"):
        if state.get(key):
            (out / f"{key}.txt").write_text("".join(f"{value}\n" for value in state[key]))


def _write_meta(out: Path, meta: dict[str, Any]) -> None:
    from modaltune.run import write_text_atomic

    write_text_atomic(out / META_FILE, json.dumps(meta, indent=2, default=str) + "\n")
