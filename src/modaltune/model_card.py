"""``model/README.md``: the run's model card in the Hugging Face hub's format.

YAML front matter (``base_model``, ``library_name``, ``pipeline_tag``, ``tags``, ``datasets`` when the
data names a hub dataset, ``model-index`` with the validation metrics) written through
``huggingface_hub.ModelCardData``, so the hub reads it as it reads its own; then what a person wants
to know: base model, task, strategy, data, metrics beside the zero-shot baseline, and how to load it.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

#: The hub's pipeline tag of a task's saved model, by task and (for dual encoders) the media it reads.
PIPELINE_TAGS: dict[str, str] = {
    "classify": "zero-shot-image-classification",
    "classify/audio": "zero-shot-audio-classification",
    "retrieve": "zero-shot-image-classification",
    "retrieve/audio": "zero-shot-audio-classification",
    "vqa": "visual-question-answering",
    "caption": "image-to-text",
    "detect": "zero-shot-object-detection",
    "chat": "image-text-to-text",
}
_AUDIO_MODEL_TYPES = {"clap"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def write_model_card(model_dir: Path, *, cfg: Any, metrics: dict[str, Any], data_report: dict[str, Any]) -> Path:
    """Write ``model_dir/README.md`` for the run whose resolved config is ``cfg``; returns its path."""
    from huggingface_hub import ModelCard

    card = ModelCard(render(model_dir, cfg=cfg, metrics=metrics, data_report=data_report))
    path = model_dir / "README.md"
    card.save(str(path))
    return path


def render(model_dir: Path, *, cfg: Any, metrics: dict[str, Any], data_report: dict[str, Any]) -> str:
    from huggingface_hub import EvalResult, ModelCardData

    run = metrics.get("run", {})
    task, base = cfg.task, str(cfg.model.name)
    model_type = _model_type(model_dir)
    pipeline = PIPELINE_TAGS.get(f"{task}/audio" if model_type in _AUDIO_MODEL_TYPES else task,
                                 PIPELINE_TAGS.get(task))
    strategy = (run.get("strategy") or {}).get("strategy") or cfg.strategy.name
    dataset = _hub_dataset(Path(str(cfg.data.train)))
    data_name = dataset or Path(str(cfg.data.train)).name
    scores = _scalars(metrics)
    results = [EvalResult(task_type=pipeline or task, task_name=task, dataset_type=dataset or "custom",
                          dataset_name=data_name, dataset_split="validation", metric_type=name, metric_name=name,
                          metric_value=value)
               for name, value in scores.items()]
    data = ModelCardData(
        base_model=base if _is_hub_id(base) else None,
        library_name="transformers",
        pipeline_tag=pipeline,
        tags=[t for t in ("modaltune", task, strategy, model_type) if t],
        datasets=[dataset] if dataset else None,
        model_name=f"{Path(str(cfg.runtime.output)).name} ({task}, {strategy})",
        eval_results=results or None,
    )
    return f"---\n{data.to_yaml()}\n---\n\n{_body(cfg, metrics, data_report, task, base, strategy, scores)}"


def _body(cfg: Any, metrics: dict[str, Any], data_report: dict[str, Any], task: str, base: str, strategy: str,
          scores: dict[str, float]) -> str:
    run = metrics.get("run", {})
    info = run.get("strategy") or {}
    trainable = info.get("trainable_params")
    total = info.get("total_params")
    share = f" ({trainable:,} of {total:,} parameters trained)" if trainable is not None and total else ""
    lines = [f"# {Path(str(cfg.runtime.output)).name}", "",
             f"`{base}` adapted to the task **{task}** with the **{strategy}** strategy{share} by "
             f"[modaltune](https://pypi.org/project/modaltune/).", "", "## Data", ""]
    train = data_report.get("train", {})
    lines.append(f"- training data: `{cfg.data.train}`: {run.get('train_rows', train.get('rows_ok'))} examples "
                 f"used of {train.get('rows_read', '?')} read"
                 + (f", {train.get('rows_bad')} skipped ({_reasons(train)})" if train.get("rows_bad") else ""))
    lines.append(f"- validation: {run.get('val_rows', 0)} examples; {data_report.get('split', 'no validation data')}")
    labels = train.get("label_counts") or {}
    if labels:
        shown = ", ".join(f"{k} ({v})" for k, v in list(labels.items())[:20]) + (", …" if len(labels) > 20 else "")
        lines.append(f"- {len(labels)} classes: {shown}")
    lines += ["", "## Results", ""]
    zero = metrics.get("zero_shot") or {}
    if scores:
        lines += ["Validation metrics of this model and of the base model before training (zero-shot):", "",
                  "| metric | this model | zero-shot |", "|---|---|---|"]
        for name, value in scores.items():
            before = zero.get(name)
            shown_before = f"{before:.4f}" if isinstance(before, (int, float)) and not isinstance(before, bool) else "–"
            lines.append(f"| {name} | {value:.4f} | {shown_before} |")
        if zero.get("skipped"):
            lines += ["", f"Zero-shot baseline: {zero['skipped']}."]
    else:
        lines.append("No validation data, so no metrics.")
    lines += ["", "## Training", "",
              f"- epochs {cfg.num_epochs}, batch size {cfg.optim.batch_size}, gradient accumulation "
              f"{cfg.optim.grad_accum}, learning rate {cfg.learning_rate}, optimizer {cfg.optim.optimizer}, "
              f"precision {cfg.optim.precision}, seed {cfg.runtime.seed}",
              f"- {run.get('steps', 0)} optimizer steps"
              + (f"; best validation step {run['best_step']} restored" if run.get("restored_best") else ""),
              "- the full resolved configuration is the run's `config.yaml` "
              "(`modaltune train --config config.yaml` reruns it)", "",
              "## Use", "", "```bash", "modaltune predict ./model <file> ...   # JSON lines out",
              "modaltune eval ./model --data <data>", "```", "",
              "The weights are a plain `transformers` checkpoint (`from_pretrained` loads them); "
              "`modaltune.json` holds what the task learned (labels, prompt, answer vocabulary).", ""]
    return "\n".join(lines)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}  # v == v: not NaN


def _reasons(report: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in (report.get("reasons") or {}).items())


def _model_type(model_dir: Path) -> str | None:
    try:
        return str(json.loads((model_dir / "config.json").read_text()).get("model_type") or "") or None
    except (OSError, ValueError):
        return None


def _is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not Path(name).exists()


def _hub_dataset(data: Path) -> str | None:
    """The hub dataset a ``save_to_disk`` folder was loaded from, as its ``dataset_info.json`` names it."""
    folders = [data, *(p for p in sorted(data.iterdir()) if p.is_dir())] if data.is_dir() else []
    for folder in folders:  # the folder itself, or the splits of a DatasetDict
        try:
            info = json.loads((folder / "dataset_info.json").read_text())
        except (OSError, ValueError):
            continue
        name = info.get("dataset_name") or info.get("builder_name")
        if isinstance(name, str) and _is_hub_id(name):
            return name
    return None
