"""The public Python API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from modaltune.config import TrainConfig
from modaltune.data.rows import Row
from modaltune.data.validate import DEFAULT_MAX_AUDIO_SECONDS
from modaltune.errors import ConfigError, DataError
from modaltune.run import RunDir, resolve_model_dir
from modaltune.tasks.base import Loaded, Task, create_task, read_meta, task_class

if TYPE_CHECKING:
    from modaltune.advisor import Advice
    from modaltune.data.validate import DataReport

logger = logging.getLogger(__name__)


@dataclass
class Splits:
    train: list[Row]
    val: list[Row]
    report: dict[str, Any]
    labels: list[str] | None


def _load(path: str | Path, task_cls: Any, *, split: str | None, known: set[str] | None, skip_bad: bool,
          data_format: str | None = None, max_audio_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
          reader_options: dict[str, Any] | None = None) -> tuple[list[Row], DataReport]:
    from modaltune.data import load_dataset

    return load_dataset(path, require=task_cls.fields, split=split, known_labels=known, skip_bad=skip_bad,
                        data_format=data_format,
                        max_audio_seconds=max_audio_seconds, reader_options=reader_options)


def load_splits(cfg: TrainConfig, task_cls: Any) -> Splits:
    """Train and validation rows: the data's own train/val folders, ``--val``, or a seeded split."""
    from modaltune.data import discover_splits, train_val_split

    splits = discover_splits(cfg.data.train) if Path(cfg.data.train).is_dir() else {}
    train_split = "train" if "train" in splits else None
    read: dict[str, Any] = {"skip_bad": cfg.data.skip_bad, "data_format": cfg.data.format,
                            "max_audio_seconds": cfg.data.max_audio_seconds,
                            "reader_options": cfg.data.reader_options}
    train, train_report = _load(cfg.data.train, task_cls, split=train_split, known=None, **read)
    # a task that uses labels requires one on every row it reads
    labels = sorted({cast(str, r.label) for r in train}) if task_cls.uses_labels else None
    known = set(labels) if labels else None
    report: dict[str, Any] = {"train": train_report.to_dict()}
    if cfg.data.val is not None:
        val, val_report = _load(cfg.data.val, task_cls, split=None, known=known, **read)
        report["val"], report["split"] = val_report.to_dict(), f"validation data from {cfg.data.val}"
    elif "val" in splits:
        val, val_report = _load(cfg.data.train, task_cls, split="val", known=known, **read)
        report["val"], report["split"] = val_report.to_dict(), "the data's own val/ folder"
    else:
        train, val = train_val_split(train, val_fraction=cfg.data.val_fraction, seed=cfg.runtime.seed,
                                     stratify_by_label=task_cls.uses_labels)
        report["split"] = (f"seeded split: {cfg.data.val_fraction:.0%} of {cfg.data.train} held out "
                           f"(seed {cfg.runtime.seed})")
        report["val_ids"] = [r.id for r in val]
    if labels is not None and len(labels) < 2:
        raise DataError(f"{cfg.data.train}: task {cfg.task} needs at least 2 classes, found {labels}")
    return Splits(train=train, val=val, report=report, labels=labels)


def validate(task: str, data: str | Path, *, skip_bad: bool = True, data_format: str | None = None,
             max_audio_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
             reader_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The data report for ``data`` as ``task`` would read it (no model, no training).

    ``data_format`` names the reader instead of sniffing; audio clips longer than
    ``max_audio_seconds`` are ``audio_too_long``; ``reader_options`` go to the reader that takes
    them (``{"box_format": "cxcywh", "normalized": True}`` for a boxes JSONL)."""
    from modaltune.data import discover_splits

    task_cls = task_class(task)
    splits = discover_splits(data) if Path(data).is_dir() else {}
    reports = {}
    for split in splits or [None]:
        rows, report = _load(data, task_cls, split=split, known=None, skip_bad=skip_bad, data_format=data_format,
                             max_audio_seconds=max_audio_seconds, reader_options=reader_options)
        reports[split or "all"] = report.to_dict()
    return reports


def device() -> torch.device:
    from modaltune.trainer.distributed import device as process_device

    return process_device()  # with several processes, each one's own GPU


def train(cfg: TrainConfig, *, resume: bool = False, progress: Any = None) -> dict[str, Any]:
    """Run ``cfg`` end to end into ``cfg.runtime.output``; returns the metrics written to ``metrics.json``.

    The recipe: read the data and the old task → load the model (the advisor first, for ``auto``)
    → score the baselines → apply the strategy → fit → WiSE-FT → export ``model/`` → score the
    exported model → write the run directory.
    """
    from modaltune.trainer import distributed

    started = time.perf_counter()
    if (warning := distributed.launch_warning()) is not None:
        logger.warning(warning)
    cfg = cfg.resolved()  # the strategy's defaults filled in: config.yaml holds what runs
    if cfg.runtime.push_to_hub:
        from modaltune.hub import check_can_push

        check_can_push(cfg.runtime.push_to_hub)  # before training, not after it
    main = distributed.is_main()  # several processes: only the main one writes the run directory
    setup = _prepare(cfg, resume)
    from modaltune.trainer.tracking import tracking

    # --report-to: the trackers get the config now, the history as it is written, the results at the end.
    with tracking(cfg.runtime.report_to, setup.run, cfg.model_dump(mode="json"), resume=resume) as tracked:
        trained = _adapt(setup, resume=resume, progress=progress if main else None, callbacks=tracked.callbacks)
        if not main:
            return {}
        metrics = _final_metrics(setup, trained, started)
        _write_outputs(setup, trained.cfg, metrics)
        tracked.finish(metrics)
    if cfg.runtime.push_to_hub:
        _push_to_hub(setup.run, cfg.runtime.push_to_hub)
    return metrics


def _push_to_hub(run: RunDir, repo: str) -> None:
    from modaltune.hub import HubError, push

    try:
        url = push(run.root, repo)
    except HubError as exc:
        raise HubError(f"{exc}. The run itself is complete in {run.root}; push it later with: "
                       f"modaltune push {run.root} {repo}") from None
    logger.info("pushed %s to %s", run.model, url)


@dataclass
class _Setup:
    """What a run reads before any model: its config, run directory, data, old task and task."""

    cfg: TrainConfig
    run: RunDir
    splits: Splits
    task: Task
    old_task: Any  # forgetting.OldTask scored before/after, or None
    replay: Any  # forgetting.OldTask rehearsed during training, or None


@dataclass
class _Trained:
    """What adapting the model leaves behind: everything but the model, which is in ``model/`` now."""

    cfg: TrainConfig  # resolved: the advisor's choices filled in
    info: Any  # strategies.StrategyInfo
    result: Any  # trainer.loop.FitResult, or None for zero-shot
    advice: Any
    wise: Any
    baseline: dict[str, Any]
    old_before: dict[str, Any] | None
    replay_skipped: str | None


def _prepare(cfg: TrainConfig, resume: bool) -> _Setup:
    from modaltune.forgetting import load_old_task

    run = RunDir(Path(cfg.runtime.output))
    _check_output(run, cfg, resume)
    task_cls = task_class(cfg.task)
    splits = load_splits(cfg, task_cls)
    old_task = replay = None
    transfer = cfg.transfer
    old = {"explicit": transfer.old_task_type, "prompt_template": cfg.task_option("prompt_template"),
           "skip_bad": cfg.data.skip_bad}
    if transfer.old_task is not None:
        old_task = load_old_task(transfer.old_task, task_cls, purpose="eval", **old)
    if transfer.replay is not None:
        replay = load_old_task(transfer.replay, task_cls, purpose="train", **old)
    # Rehearsed rows of the same task train the same head (a VQA classifier needs their answers too).
    rehearsed = replay.rows if replay is not None and replay.name == cfg.task else []
    task = _task_for(cfg, splits, extra_rows=rehearsed)
    from modaltune.trainer import distributed

    distributed.barrier()  # every process has checked the output before the main one writes into it
    if distributed.is_main():
        run.create()
        run.config.write_text(cfg.to_yaml())
        run.write_json(run.data_report, splits.report)
    return _Setup(cfg, run, splits, task, old_task, replay)


def _adapt(setup: _Setup, *, resume: bool, progress: Any, callbacks: Sequence[Any] = ()) -> _Trained:
    """Load, baseline, apply the strategy, fit, WiSE-FT and export; the model does not outlive this call,
    so the final scoring loads ``model/`` with no training copy beside it (the run's peak memory is
    training's, not two models side by side)."""
    from modaltune.forgetting import Anchor, rehearsable, score_old_task
    from modaltune.inference import evaluate_rows
    from modaltune.strategies import LoraOptions, apply_strategy, export
    from modaltune.trainer.loop import fit

    cfg, task, splits = setup.cfg, setup.task, setup.splits
    advice = loaded = None
    if cfg.strategy.name == "auto":
        # Advised from the base model as it is; config.yaml keeps `auto`, so a rerun advises again.
        loaded = task.load(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code,
                           options=cfg.model_options())
        advice = advise_for(cfg, task, loaded, splits)
        cfg = follow_advice(cfg, advice)
        if advice.strategy == "scratch":
            loaded = None  # scratch must not start from the weights just read

    scratch = cfg.strategy.name == "scratch"
    torch.manual_seed(cfg.runtime.seed)  # scratch init and LoRA init are drawn from here
    if loaded is None:
        loaded = task.load(cfg.model.name, scratch=scratch, trust_remote_code=cfg.model.trust_remote_code,
                           options=cfg.model_options())
    loaded.model.to(device())
    _drop_unusable(setup, task, loaded)

    baseline: dict[str, Any] = {"skipped": "scratch never reads the pretrained weights"} if scratch else {}
    from modaltune.trainer.distributed import is_main

    main = is_main()  # the other processes of a multi-process run only train
    if not scratch and cfg.transfer.zero_shot_baseline and splits.val and main:
        baseline = evaluate_rows(task, loaded, splits.val, batch_size=cfg.runtime.eval_batch_size,
                                 workers=cfg.num_workers)
    old_before = None
    if setup.old_task is not None and not scratch and main:
        old_before = score_old_task(setup.old_task, loaded, batch_size=cfg.runtime.eval_batch_size,
                                    workers=cfg.num_workers)

    info = apply_strategy(task, loaded, cfg.strategy.name, layers=cfg.strategy.layers, towers=cfg.strategy.towers,
                          lora=LoraOptions(cfg.strategy.lora_rank, cfg.strategy.lora_alpha, cfg.strategy.lora_dropout))
    anchor = Anchor.capture(loaded.model) if (cfg.transfer.wise_ft is not None or cfg.transfer.l2sp) else None
    replay, replay_skipped = setup.replay, None
    if replay is not None and not rehearsable(replay, loaded):
        replay_skipped = (f"--replay skipped: with strategy {cfg.strategy.name} nothing the old task uses trains "
                          "(only the target's own head does), so rehearsing it could not change it")
        logger.warning(replay_skipped)
    result = None
    if cfg.strategy.name != "zero-shot":
        result = fit(cfg, task, loaded, splits.train, splits.val, setup.run, resume=resume, progress=progress,
                     replay=None if replay_skipped else replay, anchor=anchor, callbacks=callbacks)
    if not main:
        return _Trained(cfg, info, result, advice, None, baseline, old_before, replay_skipped)
    wise = None
    if cfg.transfer.wise_ft is not None and anchor is not None:
        wise = _wise_ft(cfg, task, loaded, splits.val, anchor, setup.old_task, old_before)
    loaded.model.to("cpu")
    export(task, loaded, setup.run.model, consume=True)  # the training copy is dropped just below
    del loaded, anchor
    import gc

    gc.collect()
    return _Trained(cfg, info, result, advice, wise, baseline, old_before, replay_skipped)


def _drop_unusable(setup: _Setup, task: Task, loaded: Loaded) -> None:
    """Rows the loaded model cannot take (``Task.usable_rows``: a conversation longer than
    ``--chat.max-length`` once the processor expanded its images) leave every split, with their reason
    codes in ``data_report.json`` under ``model_checks``."""
    from collections import Counter

    found: dict[str, Any] = {}
    for name in ("train", "val"):
        kept, bad = task.usable_rows(loaded, getattr(setup.splits, name))
        if bad:
            setattr(setup.splits, name, kept)
            found[name] = {"dropped": len(bad), "reasons": dict(Counter(b.reason for b in bad)),
                           "rows": [b.to_dict() for b in bad[:20]]}
    for old in (setup.old_task, setup.replay):
        if old is not None:
            old.rows, bad = old.task.usable_rows(old.task.attach(loaded), old.rows)
            if bad:
                found[f"old:{old.source}"] = {"dropped": len(bad), "reasons": dict(Counter(b.reason for b in bad))}
    if not found:
        return
    for name, entry in found.items():
        logger.warning("%s: %d row(s) the model cannot take were dropped (%s)", name, entry["dropped"],
                       ", ".join(f"{k}: {v}" for k, v in entry["reasons"].items()))
    if not setup.splits.train:
        raise DataError(f"{setup.cfg.data.train}: no training row is usable with this model "
                        f"({found.get('train', {}).get('reasons')}); see data_report.json")
    setup.splits.report["model_checks"] = found
    from modaltune.trainer import distributed

    if distributed.is_main():
        setup.run.write_json(setup.run.data_report, setup.splits.report)


def _final_metrics(setup: _Setup, trained: _Trained, started: float) -> dict[str, Any]:
    """The numbers of the exported ``model/`` itself, so `modaltune eval RUN/model` reproduces them."""
    from modaltune.forgetting import forgetting_report, score_old_task

    cfg, splits, result = trained.cfg, setup.splits, trained.result
    final: dict[str, Any] = {}
    if splits.val:
        final = evaluate(setup.run.model, rows=splits.val, batch_size=cfg.runtime.eval_batch_size)
    extra: dict[str, Any] = {}
    if setup.old_task is not None:
        _, exported = load_model(setup.run.model)
        after = score_old_task(setup.old_task, exported, batch_size=cfg.runtime.eval_batch_size,
                               workers=cfg.num_workers)
        extra["forgetting"] = forgetting_report(setup.old_task, trained.old_before, after)
        del exported
    if trained.advice is not None:
        extra["advice"] = trained.advice.to_dict()
    if trained.wise is not None:
        extra["wise_ft"] = trained.wise.to_dict()
    if setup.replay is not None:
        extra["replay"] = {"data": setup.replay.source, "task": setup.replay.name, "rows": len(setup.replay.rows),
                           "ratio": cfg.replay_share, "skipped": trained.replay_skipped}
    if cfg.transfer.l2sp:
        extra["l2sp"] = cfg.transfer.l2sp
    return {
        **final,
        "zero_shot": trained.baseline,
        **extra,
        "run": {
            "task": cfg.task, "model": cfg.model.name, "strategy": trained.info.to_dict(),
            "primary_metric": setup.task.primary_metric,
            "train_rows": len(splits.train), "val_rows": len(splits.val),
            "steps": result.state.step if result else 0,
            "best_step": result.state.best_step if result else None,
            "restored_best": result.restored_best if result else False,
            "stopped_early": result.stopped_early if result else False,
            "skipped_steps": result.state.skipped_steps if result else 0,
            "feature_cache": result.feature_cache if result else None,
            "train_seconds": round(result.seconds, 3) if result else 0.0,
            "total_seconds": round(time.perf_counter() - started, 3),
        },
    }


def _write_outputs(setup: _Setup, cfg: TrainConfig, metrics: dict[str, Any]) -> None:
    """metrics.json, the plots and report.html."""
    from modaltune import plots
    from modaltune import report as reporting

    run, splits = setup.run, setup.splits
    run.write_json(run.metrics, metrics)
    if (run.model / "config.json").is_file():
        from modaltune.model_card import write_model_card

        write_model_card(run.model, cfg=cfg, metrics=metrics, data_report=splits.report)
    plots.plot_history(run.read_history(), run.plots)
    if "confusion_matrix" in metrics and splits.labels:
        plots.plot_confusion_matrix(metrics["confusion_matrix"], splits.labels, run.plots / "confusion_matrix.png")
    reporting.write_report(run.root, title=f"modaltune · {cfg.task} · {cfg.strategy.name}", config=cfg.model_dump(),
                           data_report=splits.report, metrics=metrics, history=run.read_history(),
                           sections=reporting.transfer_sections(metrics) + reporting.sample_sections(metrics))


def _task_for(cfg: TrainConfig, splits: Splits, *, extra_rows: Sequence[Row] = ()) -> Task:
    """The task instance ``cfg`` trains: labels and prompt from the data, class weights if asked,
    whatever else the task learns from its training rows (and ``extra_rows``: rehearsed ones)."""
    from modaltune.trainer.batches import class_weights

    options: dict[str, Any] = {}
    options.update(task_class(cfg.task).options_from_rows([*splits.train, *extra_rows]))
    section = cfg.task_options()  # the task's own config section: its fields are constructor arguments
    if section is not None:
        options.update(section.model_dump(exclude_none=True))
    if splits.labels is not None:
        options["labels"] = splits.labels
        if cfg.data.balance == "class-weights":
            # labels were read from the training rows, so every one of them has a label
            options["class_weights"] = class_weights([cast(str, r.label) for r in splits.train], splits.labels)
    return create_task(cfg.task, **options)


def follow_advice(cfg: TrainConfig, advice: Advice) -> TrainConfig:
    """``cfg`` with the advised strategy and layers; the advised learning rate, epochs and replay
    ratio fill in only what the user left unset."""
    transfer = cfg.transfer
    return cfg.with_values({
        "strategy.name": advice.strategy, "strategy.layers": advice.layers,
        "optim.lr": cfg.optim.lr if cfg.optim.lr is not None else advice.lr,
        "schedule.epochs": cfg.schedule.epochs if cfg.schedule.epochs is not None else advice.epochs,
        "transfer.replay_ratio": transfer.replay_ratio if transfer.replay_ratio is not None or transfer.replay is None
        else advice.replay_ratio,
    })


def advise(task: str, model: str, data: str | Path, *, reference: str | Path | None = None, batch_size: int = 16,
           seed: int = 0, prompt_template: str | None = None, trust_remote_code: bool = False,
           data_format: str | None = None, max_audio_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS) -> Any:
    """Measure ``data``'s shift for ``model`` and recommend a strategy (no training)."""
    from modaltune.config import config_model

    values: dict[str, Any] = {
        "task": task, "model": {"name": str(model), "trust_remote_code": trust_remote_code},
        "data": {"train": str(data), "format": data_format, "max_audio_seconds": max_audio_seconds},
        "optim": {"batch_size": batch_size}, "runtime": {"seed": seed}, "strategy": {"name": "auto"}}
    if prompt_template:
        values["prompt_template"] = prompt_template
    return advise_config(config_model().model_validate(values), reference=reference)


def advise_config(cfg: TrainConfig, *, reference: str | Path | None = None) -> Any:
    """`advise` for a whole config (``modaltune advise``: the same options as ``train``; its data,
    model, batch size, seed and task options are the ones that count)."""
    from modaltune.forgetting import load_old_task

    task_cls = task_class(cfg.task)
    splits = load_splits(cfg, task_cls)
    instance = _task_for(cfg, splits)
    loaded = instance.load(cfg.model.name, trust_remote_code=cfg.model.trust_remote_code,
                           options=cfg.model_options())
    ref = None
    if reference is not None:
        ref = load_old_task(reference, task_cls, purpose="eval", prompt_template=cfg.task_option("prompt_template"))
    return advise_for(cfg, instance, loaded, splits, reference=ref)


def advise_for(cfg: TrainConfig, task: Task, loaded: Loaded, splits: Splits, *, reference: Any = None) -> Any:
    """The advisor's recommendation for training ``cfg``'s data from the base model in ``loaded``."""
    from modaltune.advisor import ModelFacts, advise, data_facts
    from modaltune.shift import measure_shift

    loaded.model.to(device())
    # Measured on every labelled example the model will see (train and validation alike).
    rows = splits.train + splits.val
    shift = measure_shift(task, loaded, rows, batch_size=cfg.runtime.eval_batch_size, seed=cfg.runtime.seed,
                          reference=reference.rows if reference else None,
                          reference_task=reference.task if reference else None)
    depth = min(len(b) for b in task.blocks(loaded).values())
    params = sum(p.numel() for p in loaded.model.parameters())
    return advise(data_facts(splits.train, task.uses_labels), ModelFacts(params, depth), shift,
                  batch_size=cfg.optim.batch_size)


def _wise_ft(cfg: TrainConfig, task: Task, loaded: Loaded, val: list[Row], anchor: Any,
             old_task: Any, old_before: dict[str, Any] | None) -> Any:
    from modaltune.forgetting import score_old_task, wise_ft
    from modaltune.inference import evaluate_rows

    if cfg.transfer.wise_ft == "auto" and not val:
        raise ConfigError("--wise-ft auto picks alpha on validation data, and this run has none")

    def target_score() -> float:
        return float(evaluate_rows(task, loaded, val, batch_size=cfg.runtime.eval_batch_size)[task.primary_metric])

    def old_drop() -> float | None:
        if old_task is None or old_before is None:
            return None
        after = score_old_task(old_task, loaded, batch_size=cfg.runtime.eval_batch_size)
        return float(old_before[old_task.metric]) - float(after[old_task.metric])

    assert cfg.transfer.wise_ft is not None, "called only when --wise-ft is set"
    return wise_ft(loaded.model, anchor, alpha=cfg.transfer.wise_ft, target_score=target_score, old_drop=old_drop,
                   max_forgetting=cfg.transfer.max_forgetting, rows=len(val), metric=task.primary_metric)


def _check_output(run: RunDir, cfg: TrainConfig, resume: bool) -> None:
    if resume:
        if not run.config.is_file():
            raise ConfigError(f"--resume: {run.root} is not a run directory (no config.yaml)")
        from modaltune.config import build_config

        saved = build_config(run.config).resolved().flat()
        ignore = {"data.workers", "runtime.eval_batch_size", "runtime.report_to",
                  "runtime.push_to_hub"}  # do not change the result
        current = cfg.resolved().flat()
        changed = [k for k, v in current.items() if k not in ignore and saved.get(k) != v]
        if changed:
            raise ConfigError(
                f"--resume: the config differs from {run.config} in {', '.join(changed)}; "
                "resume with the run's own config (modaltune train --config RUN/config.yaml --resume)"
            )
    elif run.metrics.exists() or run.checkpoints.exists():
        raise ConfigError(
            f"output {run.root} already holds a run; pass --resume to continue it or choose another --output"
        )


def load_model(model_or_run: str | Path, *, task: str | None = None, labels: list[str] | None = None,
               texts: list[str] | None = None, trust_remote_code: bool = False,
               **task_options: Any) -> tuple[Task, Loaded]:
    """A saved modaltune model (or a run directory, or a base model with ``task``) ready to use;
    ``task_options`` (num_beams, threshold, ...) go to the task, those left None are not given."""
    source = resolve_model_dir(model_or_run)
    meta = read_meta(source) if source.is_dir() else None
    name = task or (meta or {}).get("task")
    if name is None:
        raise ConfigError(f"{model_or_run} is not a modaltune model or run: pass --task to use it as a base model")
    if meta is not None and task is not None and meta.get("task") != task:
        raise ConfigError(f"{model_or_run} was trained for task {meta.get('task')!r}, not {task!r}")
    options: dict[str, Any] = {}
    if labels:
        options["labels"] = labels
    if texts:
        options["texts"] = texts
    options.update({k: v for k, v in task_options.items() if v is not None})  # num_beams, threshold, ...
    instance = create_task(name, **options)
    loaded = instance.load(source if source.exists() else str(model_or_run), trust_remote_code=trust_remote_code)
    loaded.model.to(device())
    return instance, loaded


def evaluate(model_or_run: str | Path, data: str | Path | None = None, *, task: str | None = None,
             rows: list[Row] | None = None, batch_size: int = 64, skip_bad: bool = False,
             data_format: str | None = None,
             max_audio_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
             reader_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The task's metrics of a model on ``data`` (or, for a run directory, on its validation data).

    ``data_format``, ``max_audio_seconds`` and ``reader_options`` apply to ``data`` as in `validate`."""
    from modaltune.inference import evaluate_rows

    if rows is None:
        rows = _eval_rows(model_or_run, data, task=task, skip_bad=skip_bad, data_format=data_format,
                          max_audio_seconds=max_audio_seconds, reader_options=reader_options)
    labels = sorted({r.label for r in rows if r.label}) or None
    meta = read_meta(resolve_model_dir(model_or_run)) if Path(model_or_run).is_dir() else None
    instance, loaded = load_model(model_or_run, task=task, labels=None if meta else labels)
    return evaluate_rows(instance, loaded, rows, batch_size=batch_size)


def _eval_rows(model_or_run: str | Path, data: str | Path | None, *, task: str | None, skip_bad: bool,
               data_format: str | None = None,
               max_audio_seconds: float | None = DEFAULT_MAX_AUDIO_SECONDS,
               reader_options: dict[str, Any] | None = None) -> list[Row]:
    run = RunDir(Path(model_or_run))
    if data is None:
        if not run.config.is_file():
            raise ConfigError("pass --data: only a run directory knows its own validation data")
        from modaltune.config import build_config

        cfg = build_config(run.config)
        task_cls = task_class(cfg.task)
        return load_splits(cfg, task_cls).val
    name = task or (read_meta(resolve_model_dir(model_or_run)) or {}).get("task")
    if name is None:
        raise ConfigError(f"{model_or_run} is not a modaltune model or run: pass --task")
    task_cls = task_class(name)
    from modaltune.data import discover_splits

    splits = discover_splits(data) if Path(data).is_dir() else {}
    split = next((s for s in ("test", "val") if s in splits), None)
    rows, _ = _load(data, task_cls, split=split, known=None, skip_bad=skip_bad, data_format=data_format,
                    max_audio_seconds=max_audio_seconds, reader_options=reader_options)
    return rows


def predict(model_or_run: str | Path, inputs: Sequence[str | Path], *, task: str | None = None,
            labels: list[str] | None = None, texts: list[str] | None = None, question: str | None = None,
            num_beams: int | None = None, max_new_tokens: int | None = None, **task_options: Any) -> list[dict]:
    """Predictions for media files (images, audio clips: whatever the model takes), one dict per input
    (label + top-k, ranked texts, a caption, the answer to ``question``, or boxes). Each file is checked
    by the decoder of its kind first, so a bad one is named with its reason code. ``task_options`` are
    the task's own (detect: threshold, max_detections, save_images)."""
    from modaltune.data.fields import check_predict_rows
    from modaltune.data.media import MediaError, get_decoder, media_kind
    from modaltune.data.media.base import require_nonempty_file
    from modaltune.inference import predict_rows

    rows = []
    for item in inputs:  # before the model loads: a bad file is found in milliseconds
        kind = media_kind(Path(item))
        try:
            if kind is None:
                require_nonempty_file(Path(item))
                raise MediaError("unsupported_file", f"{item} is not an image or audio file this tool can read")
            get_decoder(kind).check(Path(item))
        except MediaError as exc:
            raise DataError(f"{item}: {exc.reason}: {exc.detail}") from None
        rows.append(Row(id=str(item), media={kind: Path(item)}, question=question))
    from modaltune.export.onnx_predict import is_onnx_export, predict_onnx

    if is_onnx_export(model_or_run):  # `modaltune export` output: onnxruntime, no PyTorch model
        return predict_onnx(model_or_run, rows, labels=labels, texts=texts, **task_options)
    instance, loaded = load_model(model_or_run, task=task, labels=labels, texts=texts, num_beams=num_beams,
                                  max_new_tokens=max_new_tokens, **task_options)
    check_predict_rows(instance.fields, instance.name, rows)
    return predict_rows(instance, loaded, rows)
