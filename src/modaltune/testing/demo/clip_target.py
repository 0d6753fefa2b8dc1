"""One regime of the CLIP demo's target task: its data and the old task's, the advisor's recommendation,
and one strategy trained on it and scored on its test split."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from modaltune.testing.demo.clip_base import BaseModel
from modaltune.testing.demo.clip_scores import display_name
from modaltune.testing.demo.clip_specs import KEEP, BaseSpec, TargetSpec


def write_target_data(target: TargetSpec, base: BaseSpec, root: Path) -> Path:
    """``root/{train,val,test}/<shape>/*.png``, drawn in the target style."""
    from modaltune.testing.synthetic import write_classification_folder

    counts = {"train": target.train_per_class, "val": target.val_per_class, "test": target.test_per_class}
    return write_classification_folder(
        root,
        classes=target.classes,
        attribute="shape",
        per_class=counts,
        seed=target.seed,
        style=target.style,
        image_size=base.image_size,
    )


def write_old_task(target: TargetSpec, base: BaseSpec, root: Path) -> Path:
    """``root/{train,test}/<colour>/*.png`` in the source style: the base model's original task."""
    from modaltune.testing.synthetic import write_classification_folder

    counts = {"train": target.old_train_per_class, "test": target.old_test_per_class}
    return write_classification_folder(
        root,
        classes=target.old_classes,
        attribute="colour",
        per_class=counts,
        seed=target.seed + 1000,
        style=base.styles[0],
        image_size=base.image_size,
    )


def advise_target(base: BaseModel, data: Path, spec: TargetSpec, *, console: Console) -> Any:
    """What ``modaltune advise`` recommends for the target data (shown, and marked in the table)."""
    from modaltune.api import advise

    advice = advise(
        "classify",
        str(base.model),
        str(data),
        batch_size=spec.batch_size,
        seed=spec.seed,
        prompt_template=spec.prompt_template,
    )
    console.print(advice_line(advice))
    return advice


def advise_and_train(
    base: BaseModel, data: Path, spec: TargetSpec, runs: Path, *, old: Path, console: Console
) -> tuple[Any, dict[str, Any] | None]:
    """The advisor's recommendation for the regime and, when the regime trains last-n, the last-n row at
    the depth it advises (one job: that row cannot start before the advice)."""
    advice = advise_target(base, data, spec, console=console)
    if "last-n" not in spec.strategies:
        return advice, None
    return advice, run_strategy(
        "last-n", base, data, spec, runs, old=old, console=console, layers=_last_n_layers(spec, advice), progress=False
    )


def _last_n_layers(spec: TargetSpec, advice: Any) -> int:
    """The blocks last-n re-trains: the advisor's depth when it advises last-n, else the regime's own."""
    return advice.layers if advice.strategy == "last-n" and advice.layers else spec.layers


def advice_line(advice: Any) -> str:
    shift = advice.inputs["shift"]
    return (
        f"advisor: [bold]{advice.strategy}[/]"
        + (f" (last {advice.layers})" if advice.layers else "")
        + f" · measured shift {shift['shift']:.2f} (zero-shot {shift['zero_shot']:.3f}, "
        f"chance {shift['chance']:.3f})"
    )


def run_strategy(
    strategy: str,
    base: BaseModel,
    data: Path,
    spec: TargetSpec,
    runs: Path,
    *,
    old: Path,
    console: Console,
    keep: bool = False,
    layers: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or not, for zero-shot) one strategy into ``runs/<name>`` and score it on test/;
    ``keep`` adds rehearsal of the old task and WiSE-FT (the KEEP row); ``layers``: last-n's depth
    (default: the regime's); ``progress``: draw a progress bar."""
    from modaltune.api import evaluate, train
    from modaltune.config import build_config
    from modaltune.progress import TrainingProgress

    name = KEEP if keep else strategy
    extra: dict[str, Any] = {"replay": str(old), "wise_ft": "auto"} if keep else {}
    cfg = build_config(
        task="classify",
        model=str(base.model),
        data=str(data),
        output=str(runs / name),
        strategy=strategy,
        layers=(layers or spec.layers) if strategy == "last-n" else None,
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        lr=spec.lrs.get(strategy),
        seed=spec.seed,
        prompt_template=spec.prompt_template,
        keep_last=1,
        augment=spec.augment,
        old_task=str(old),
        **extra,
    )
    tick = time.perf_counter()
    bar = TrainingProgress(name, console) if progress and strategy != "zero-shot" else None
    metrics = train(cfg, progress=bar)
    seconds = time.perf_counter() - tick
    # train() picked its best epoch on val/, so val accuracy flatters; test/ was never looked at.
    test = evaluate(runs / name, data)
    forgetting = metrics["forgetting"]
    row = {
        "strategy": name,
        "regime": spec.regime,
        "layers": cfg.strategy.layers,
        "trainable_params": metrics["run"]["strategy"]["trainable_params"],
        "accuracy": test["accuracy"],
        "seconds": round(seconds, 2),
        "macro_f1": test["macro_f1"],
        "val_accuracy": metrics["accuracy"],
        # What this model scored on val/ before training: the base model's zero-shot accuracy.
        "zero_shot_accuracy": metrics["zero_shot"].get("accuracy"),
        "train_seconds": metrics["run"]["train_seconds"],
        "total_params": metrics["run"]["strategy"]["total_params"],
        "steps": metrics["run"]["steps"],
        "lr": cfg.learning_rate,
        "old_task_accuracy": forgetting["after"],
        "old_task_before": forgetting["before"],
        "forgetting": forgetting["drop"],
        "wise_ft_alpha": metrics.get("wise_ft", {}).get("alpha"),
        "run_dir": str(runs / name),
    }
    console.print(result_line(row))
    return row


def result_line(row: dict[str, Any]) -> str:
    return (
        f"{display_name(row):>19}: test accuracy {row['accuracy']:.3f} (val {row['val_accuracy']:.3f}) · "
        f"old task {row['old_task_accuracy']:.3f} in {row['seconds']:.1f}s"
    )
