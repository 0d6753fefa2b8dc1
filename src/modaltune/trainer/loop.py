"""The training recipe, top to bottom: one loop for every task family and strategy.

Accelerate provides the device, the process group, autocast for ``--precision bf16`` and
backward/clipping. The loop owns data order, gradient accumulation, evaluation, checkpoints and resume
so that a run killed at any point and resumed ends with bit-identical weights.

Several processes (``accelerate launch --multi_gpu --num_processes N``) split every micro-batch of
the same plan and sum their gradients before each optimizer step (`trainer.distributed`); the main
process alone evaluates (its metrics are broadcast, so every process takes the same early-stopping
and best-step decisions and the numbers are exactly a single process's) and writes history and
checkpoints. How a step's gradients are taken, combined and applied is the engine's
(`trainer.engines`: plain or data-parallel, FSDP2, DeepSpeed ZeRO); the loop reads the same for all.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modaltune.config import TrainConfig
from modaltune.data.rows import Row
from modaltune.errors import ConfigError, ModaltuneError
from modaltune.feature_cache import cached_outputs
from modaltune.forgetting import Anchor, OldTask, replay_split
from modaltune.inference import evaluate_rows
from modaltune.run import RunDir
from modaltune.tasks.base import Loaded, Task
from modaltune.trainer import checkpoint as ckpt
from modaltune.trainer import distributed, zero
from modaltune.trainer.batches import (
    MediaDataset,
    MixedDataset,
    flushes_denormals,
    loader,
    oversample_weights,
    plan_epoch,
    steps_per_epoch,
)
from modaltune.trainer.callbacks import EXIT_SIGTERM, KILL_ENV, Callback, Event, RestoreBest, default_callbacks
from modaltune.trainer.engines import Engine, ShardedEngine
from modaltune.trainer.terms import L2SPTerm, LossTerm, ReplayTerm, loss_parts, part_key

# Kept importable from here, where they used to live.
__all__ = ["EXIT_SIGTERM", "KILL_ENV", "FitResult", "fit"]
logger = logging.getLogger(__name__)


@dataclass
class FitResult:
    state: ckpt.TrainerState
    seconds: float
    stopped_early: bool
    restored_best: bool
    feature_cache: dict[str, Any] | None = None


def make_accelerator(precision: str) -> Any:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # Accelerate keeps one process-wide state; a library may run several fits in one process
    # (compare, tests) with different precisions, so start each from a clean state.
    AcceleratorState._reset_state(reset_partial_state=True)
    zero.prepare_cpu()
    # Under DeepSpeed, accelerate's bf16 is DeepSpeed's bf16 weights; modaltune autocasts itself (zero.autocast).
    return Accelerator(mixed_precision="bf16" if precision == "bf16" and not zero.launched() else "no")


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            # Weight decay on biases, norms and scalars (logit scale) only hurts: decay matrices alone.
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups: list[dict[str, Any]] = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
                                    {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if cfg.optim.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.learning_rate, momentum=cfg.optim.momentum)
    # The fused kernel (one pass per parameter group, CPU and CUDA) instead of ~10 elementwise ops
    # per tensor; it is what HF Trainer uses by default.
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
    return torch.optim.AdamW(groups, lr=cfg.learning_rate, fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> Any:
    from transformers import get_scheduler

    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[cfg.schedule.name]
    return get_scheduler(name, optimizer, num_warmup_steps=int(cfg.schedule.warmup_ratio * total_steps),
                         num_training_steps=total_steps)


def fit(
    cfg: TrainConfig,
    task: Task,
    loaded: Loaded,
    train_rows: Sequence[Row],
    val_rows: Sequence[Row],
    run: RunDir,
    *,
    resume: bool = False,
    progress: Any = None,
    replay: OldTask | None = None,
    anchor: Anchor | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``loaded.model`` in place; ``replay`` mixes old-task rows into every micro-batch at
    ``cfg.replay_share``, ``anchor`` (the starting weights) enables the ``cfg.transfer.l2sp`` penalty.
    ``callbacks`` run after the default ones (SIGTERM, early stopping, ``progress``)."""
    started = time.perf_counter()
    accelerator = make_accelerator(cfg.optim.precision)
    procs = distributed.processes()
    engine_problem = distributed.unsupported_engine(*distributed.engine(accelerator))
    if engine_problem:
        raise ConfigError(engine_problem)
    fsdp = distributed.fsdp_settings(accelerator)
    if fsdp is not None and (replay is not None or (anchor is not None and cfg.transfer.l2sp)):
        raise ConfigError("rehearsal (--replay) and --l2sp are not supported with FSDP yet: they read the "
                          "model outside its sharded forward. Run them data-parallel (--multi_gpu without --use_fsdp)")
    ds_config = zero.settings(accelerator, cfg, procs.world)  # DeepSpeed ZeRO-1/2, or None
    # Under FSDP the plain model stays where it was loaded (the host) while its sharded copy trains.
    model = loaded.model if fsdp is not None else loaded.model.to(accelerator.device)
    model.train()
    _speed_options(cfg, task, loaded)

    # ---- the plan: data order is a function of (seed, epoch) only -------------------------------
    target_batch, old_batch = cfg.optim.batch_size, 0
    old_loaded = None
    if replay is not None:
        target_batch, old_batch = replay_split(cfg.optim.batch_size, cfg.replay_share)
        old_loaded = replay.task.attach(loaded)
    l2sp = anchor.to(accelerator.device) if anchor is not None and cfg.transfer.l2sp else None
    per_epoch = steps_per_epoch(len(train_rows), target_batch, cfg.optim.grad_accum)
    total_steps = per_epoch * cfg.num_epochs
    if cfg.schedule.max_steps is not None:
        total_steps = min(total_steps, cfg.schedule.max_steps)
    weights = None
    if cfg.data.balance == "oversample":
        weights = oversample_weights([row.label for row in train_rows])
    with accelerator.main_process_first():  # one process fills the on-disk cache, the others read it
        # Not under FSDP: the cached split's head would be the plain model's, not the sharded one's.
        cached = None if fsdp is not None else _feature_cache(cfg, task, loaded, train_rows, val_rows, replay,
                                                              accelerator.device)
    target_data = cached.train if cached else MediaDataset(train_rows, augment=cfg.data.augment,
                                                         seed=cfg.runtime.seed,
                                                         media_options=loaded.media_options)
    replay_data = MediaDataset(replay.rows, media_options=loaded.media_options) if replay is not None else None
    dataset = MixedDataset(target_data, replay_data)
    target_collate = cached.split.collate if cached else (lambda items: task.collate(loaded, items))
    target_loss = cached.split.loss if cached else (lambda batch: task.loss(loaded, batch))

    def collate(items: list) -> dict[str, dict[str, torch.Tensor]]:
        parts = {"target": target_collate([item for tag, item in items if tag == "target"])}
        old_items = [item for tag, item in items if tag == "replay"]
        if old_items:
            assert replay is not None and old_loaded is not None, "replay items come only from replay data"
            parts["replay"] = replay.task.collate(old_loaded, old_items)
        return parts

    terms: list[LossTerm] = []
    if replay is not None and old_loaded is not None:  # old_loaded is set whenever replay is
        terms.append(ReplayTerm(replay.task, old_loaded))
    if l2sp is not None and cfg.transfer.l2sp:  # l2sp is set only when cfg.transfer.l2sp is
        terms.append(L2SPTerm(l2sp, model, cfg.transfer.l2sp))

    def micro_batch_loss(batch: dict[str, dict[str, torch.Tensor]]) -> tuple[torch.Tensor, dict[str, float]]:
        """The total to minimise and every part of it (the task's named parts, then each term)."""
        parts = loss_parts(target_loss(batch["target"]))
        total = parts["loss"]
        logged = {part_key(name): float(value.detach()) for name, value in parts.items() if name != "loss"}
        for term in terms:
            value = term(batch)
            if value is not None:
                total = total + value
                logged[term.name] = float(value.detach())
        return total, logged

    plain, sharded = model, None
    autocast = (lambda: zero.autocast(cfg.optim.precision, accelerator.device)) if ds_config else accelerator.autocast
    if fsdp is not None:  # the tasks' losses read loaded.model: the sharded copy while fitting
        sharded = distributed.Sharded(model, [b for bs in task.blocks(loaded).values() for b in bs],
                                      accelerator.device, **fsdp)
        model = loaded.model = sharded.model
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    state = ckpt.TrainerState()

    # ---- resume -------------------------------------------------------------------------------
    if resume:
        found, problems = ckpt.latest_valid(run.checkpoints)
        for problem in problems:
            logger.warning("skipping %s", problem)
        if found is None:
            raise ModaltuneError(f"nothing to resume in {run.root}: no valid checkpoint under {run.checkpoints}")
        state = ckpt.load_checkpoint(found, model=model, optimizer=optimizer, scheduler=scheduler,
                                     rank=procs.rank)
        if state.processes != procs.world:
            logger.warning("resuming a %d-process run on %d processes: the data order and weights go on as "
                           "planned, dropout draws differ from an uninterrupted run", state.processes, procs.world)
        if procs.main:
            run.truncate_history(state.history_lines)
    else:
        torch.manual_seed(cfg.runtime.seed)  # dropout and any other in-loop randomness
    state.processes = procs.world
    trainable = [p for p in model.parameters() if p.requires_grad]
    engine = Engine(accelerator, optimizer, trainable, procs)
    if sharded is not None:
        engine = ShardedEngine(accelerator, optimizer, trainable, procs, sharded)
    elif ds_config is not None:  # after the resume: DeepSpeed starts from the loaded weights and optimizer state
        engine = zero.Zero(accelerator, optimizer, trainable, procs, model, ds_config)

    eval_every = cfg.schedule.eval_every or per_epoch
    save_every = cfg.schedule.save_every or per_epoch
    hooks = [*default_callbacks(cfg.schedule.early_stopping, progress,
                                restore_best=RestoreBest(run.checkpoints, plain)), *callbacks]
    event = Event(state, total_steps)

    def log(entry: dict[str, Any]) -> None:
        if procs.main:
            run.append_history(entry)
        state.history_lines += 1

    def checkpoint() -> None:
        # Every process's RNG (its dropout draws) goes into the main process's checkpoint.
        rngs = distributed.gather(ckpt.rng_state()) if procs.several else None
        # Under FSDP and DeepSpeed every process gathers the whole weights and optimizer state with the others.
        whole = engine.whole()
        if not procs.main:
            return
        ckpt.save_checkpoint(run.checkpoints, model=model, optimizer=optimizer, scheduler=scheduler, state=state,
                             rngs=rngs, weights=whole[0], optimizer_state=whole[1])
        protect = {state.best_step} if state.best_step is not None else set()
        ckpt.prune(run.checkpoints, keep_last=cfg.runtime.keep_last, protect=protect)

    def evaluate() -> None:
        """Evaluate on validation data, track the best, and let the callbacks see the metrics."""
        if not val_rows:
            return
        metrics = distributed.broadcast(engine.evaluate(validation_metrics))
        score = float(metrics[task.primary_metric])
        log({"kind": "eval", "step": state.step, "epoch": state.epoch,
             **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}})
        if state.best_metric is None or score > state.best_metric:
            state.best_metric, state.best_step, state.evals_without_improvement = score, state.step, 0
        else:
            state.evals_without_improvement += 1
        event.metrics = metrics
        for hook in hooks:
            hook.on_evaluate(event)

    def validation_metrics() -> dict[str, Any]:
        if cached is not None:
            model.eval()
            with autocast():
                outputs = cached_outputs(cached.split, val_rows, cached.val, device=accelerator.device,
                                         batch_size=cfg.runtime.eval_batch_size)
            model.train()
            return task.evaluate(loaded, outputs, list(val_rows))
        return evaluate_rows(task, loaded, val_rows, batch_size=cfg.runtime.eval_batch_size,
                             workers=cfg.num_workers, autocast=autocast)

    def run_steps() -> None:
        """Optimizer steps until the plan is done, a callback stops it, or the process must exit."""
        while state.step < total_steps and not event.stop:
            groups = plan_epoch(len(train_rows), target_batch, cfg.optim.grad_accum, seed=cfg.runtime.seed,
                                epoch=state.epoch,
                                weights=weights, replay=(len(replay.rows), old_batch) if replay else None)
            pending = groups[state.group_in_epoch:]
            # This process's share of each micro-batch (all of it when it is the only process).
            mine = [[distributed.shard(micro, procs) for micro in group] for group in pending]
            # Under FSDP and DeepSpeed a process whose share is empty still runs the forward and backward
            # (their collectives need every process) on the micro-batch's first row, with a zero weight.
            loads = [[keys or (micro[:1] if engine.lockstep else keys) for micro, keys in zip(g, gk)]
                     for g, gk in zip(pending, mine)]
            batches = loader(dataset, [keys for g in loads for keys in g if keys], collate, workers=cfg.num_workers,
                             prefetch=cfg.data.prefetch)
            for group, group_keys, group_loads in zip(pending, mine, loads):
                # -- one optimizer step over the micro-batches of this group --
                losses, finite, logged = [], True, []
                shares: list[tuple[int, float, int, dict[str, float]]] = []  # (micro, loss, rows, parts)
                # Fetched first: a task whose loss is a mean over a varying number of items (a chat
                # model's target tokens) weighs each micro-batch by its items over the step's total.
                fetched = [next(batches) if keys else None for keys in group_loads]
                # decided by the task's type, so every process takes the same path
                weighed = getattr(type(task), "loss_weight", Task.loss_weight) is not Task.loss_weight
                items = [task.loss_weight(b["target"]) if weighed and b is not None and keys else None
                         for b, keys in zip(fetched, group_keys)]
                step_items = float(sum(w or 0.0 for w in items))
                if weighed and procs.several:
                    step_items = float(sum(distributed.gather(step_items)))
                item_weights: list[float] = []
                for m, (micro, keys) in enumerate(zip(group, group_keys)):
                    last = m == len(group) - 1  # DeepSpeed reduces a step's gradients at its last backward
                    if not keys and not engine.lockstep:
                        continue  # every row of this micro-batch went to other processes
                    fetched_batch = fetched[m]
                    assert fetched_batch is not None  # fetched for every micro-batch with rows here
                    batch = {part: {k: v.to(accelerator.device) for k, v in tensors.items()}
                             for part, tensors in fetched_batch.items()}
                    with autocast():
                        loss, parts = engine.forward(micro_batch_loss, batch)
                    if engine.lockstep and (not keys or not torch.isfinite(loss)):
                        finite = finite and bool(torch.isfinite(loss)) if keys else finite
                        engine.idle_backward(loss, finite=finite, last=last)
                        continue
                    if not torch.isfinite(loss):
                        finite = False
                        continue
                    if weighed:
                        engine.backward(loss * ((items[m] or 0.0) / max(step_items, 1e-12)), last=last)
                        item_weights.append(items[m] or 0.0)
                        if procs.several:
                            shares.append((m, loss.item(), distributed.target_count(keys), parts))
                    elif procs.several:
                        # Gradients are summed across processes: weight by this share of the micro-batch.
                        rows = distributed.target_count(keys)
                        engine.backward(loss * (rows / distributed.target_count(micro)) / len(group), last=last)
                        shares.append((m, loss.item(), rows, parts))
                    else:
                        engine.backward(loss / len(group), last=last)
                    losses.append(loss.item())
                    logged.append(parts)
                    event.loss = losses[-1]
                    for hook in hooks:
                        hook.on_micro_batch_end(event)
                if procs.several:
                    finite, losses, logged = _across_processes(finite, shares)
                finite, grad_norm = engine.step(finite, cfg.optim.max_grad_norm)
                if finite:
                    state.bad_steps_in_a_row = 0
                else:
                    _bad_step(cfg, state)
                with warnings.catch_warnings():
                    # A skipped first step trips torch's "scheduler before optimizer" warning; the
                    # schedule deliberately follows step count, skipped steps included.
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
                state.step += 1
                state.group_in_epoch += 1
                log({"kind": "step", "step": state.step, "epoch": state.epoch,
                     "elapsed": round(time.perf_counter() - started, 4),  # since this process started fitting
                     "loss": _step_loss(losses, item_weights if weighed and not procs.several else None),
                     "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm, "skipped": not finite,
                     **_mean_parts(logged)})
                event.loss = losses[-1] if losses else None
                for hook in hooks:
                    hook.on_step_end(event)
                asked = _agree(event, procs)

                end_of_epoch = state.group_in_epoch == len(groups)
                if end_of_epoch:
                    state.epoch += 1
                    state.group_in_epoch = 0
                done = state.step >= total_steps
                if state.step % eval_every == 0 or end_of_epoch or done:
                    evaluate()
                    checkpoint()
                elif state.step % save_every == 0 or (asked[0] if procs.several else event.checkpoint):
                    checkpoint()
                # One process alone sees a signal that arrives after the agreement: the next step's picks it up.
                exit_code = asked[1] if procs.several else event.exit_code
                if exit_code is not None:
                    raise SystemExit(exit_code)
                if done or event.stop or end_of_epoch:
                    break

    for hook in hooks:
        hook.on_fit_start(event)
    try:
        with _flush_denormals(accelerator.device):
            run_steps()
        engine.finish(plain)
        event.finished = True
    finally:
        engine.close()
        loaded.model = plain
        for hook in hooks:
            hook.on_fit_end(event)
    return FitResult(state=state, seconds=time.perf_counter() - started, stopped_early=event.stop,
                     restored_best=event.restored_best, feature_cache=cached.info if cached else None)


def _across_processes(finite: bool, shares: list[tuple[int, float, int, dict[str, float]]],
                      ) -> tuple[bool, list[float], list[dict[str, float]]]:
    """Whether every process's losses were finite, and each micro-batch's loss and parts over all of
    its rows (each process's mean weighted by its rows): what one process would have logged."""
    reports = distributed.gather((finite, shares))
    micro: dict[int, list[tuple[float, int, dict[str, float]]]] = {}
    for _, shares_of_one in reports:
        for m, loss, rows, parts in shares_of_one:
            micro.setdefault(m, []).append((loss, rows, parts))
    losses, logged = [], []
    for m in sorted(micro):
        items = micro[m]
        rows = sum(n for _, n, _ in items)
        losses.append(sum(loss * n for loss, n, _ in items) / rows)
        names = dict.fromkeys(name for _, _, parts in items for name in parts)
        logged.append({name: sum(p[name] * n for _, n, p in items if name in p)
                       / sum(n for _, n, p in items if name in p) for name in names})
    return all(ok for ok, _ in reports), losses, logged


def _agree(event: Event, procs: distributed.Processes) -> tuple[bool, int | None]:
    """Every process takes what any process's callbacks or signals asked for at this step's end
    (stop, checkpoint now, exit), so that they never part ways; returns the checkpoint and exit asks
    agreed on (a signal arriving later changes the event, not these)."""
    if not procs.several:
        return event.checkpoint, event.exit_code
    asks = distributed.gather((event.stop, event.checkpoint, event.exit_code))
    event.stop = any(stop for stop, _, _ in asks)
    event.checkpoint = any(now for _, now, _ in asks)
    codes = [code for _, _, code in asks if code is not None]
    event.exit_code = codes[0] if codes else None
    return event.checkpoint, event.exit_code


@dataclass
class _Cached:
    split: Any
    train: Any  # FeatureDataset
    val: Any  # np.ndarray of the validation rows' boundary tensors (or None)
    info: dict[str, Any]


def _feature_cache(cfg: TrainConfig, task: Task, loaded: Loaded, train_rows: Sequence[Row],
                   val_rows: Sequence[Row], replay: OldTask | None, device: torch.device) -> _Cached | None:
    """Boundary tensors for train and validation rows when the frozen part sees fixed inputs."""
    if not cfg.runtime.feature_cache or cfg.data.augment or replay is not None:
        return None
    split = task.cache_split(loaded, cfg.strategy.name, cfg.strategy.layers)
    if split is None:
        return None
    from modaltune.feature_cache import FeatureDataset, default_cache_dir, get_features

    root = Path(cfg.runtime.cache_dir) if cfg.runtime.cache_dir else default_cache_dir()
    tick = time.perf_counter()
    model = loaded.model
    model.eval()
    try:
        def features(rows: Sequence[Row]) -> tuple[Any, bool]:  # compute_features runs under no_grad
            return get_features(split, lambda items: task.collate(loaded, items), rows, root=root,
                                media_options=loaded.media_options, device=device,
                                batch_size=cfg.runtime.eval_batch_size,
                                workers=cfg.num_workers)

        train, train_hit = features(train_rows)
        val, val_hit = features(val_rows) if val_rows else (None, True)
    finally:
        model.train()
    info = {"split": split.name, "dir": str(root), "hit": train_hit and val_hit,
            "seconds": round(time.perf_counter() - tick, 3)}
    return _Cached(split, FeatureDataset(train_rows, train), val, info)


def _speed_options(cfg: TrainConfig, task: Task, loaded: Loaded) -> None:
    """--grad-checkpointing and --compile, applied through the model's own API and the task's blocks."""
    if cfg.runtime.grad_checkpointing:
        backbone = loaded.model.backbone
        enable = getattr(backbone, "gradient_checkpointing_enable", None)
        if enable is None:
            raise ModaltuneError(f"--grad-checkpointing: {type(backbone).__name__} does not support it")
        # Non-reentrant: correct when the block inputs do not require grad (frozen embeddings).
        enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.runtime.compile:
        # Per block rather than the whole model: every task calls the model through its own methods,
        # and blocks are where the compute is; identical blocks share one compiled graph.
        for blocks in task.blocks(loaded).values():
            for block in blocks:
                block.compile(dynamic=False)


def _step_loss(losses: list[float], weights: list[float] | None) -> float | None:
    """The step's loss: the mean of its micro-batches' losses, weighted by their items when the task
    weighs them (``Task.loss_weight``), so it is the mean over every item of the step."""
    if not losses:
        return None
    if weights is None or not sum(weights):
        return sum(losses) / len(losses)
    return sum(loss * w for loss, w in zip(losses, weights)) / sum(weights)


def _mean_parts(logged: list[dict[str, float]]) -> dict[str, float]:
    """Each loss part's mean over the micro-batches of one step that had it."""
    names = dict.fromkeys(name for parts in logged for name in parts)
    return {name: sum(v) / len(v) for name in names if (v := [p[name] for p in logged if name in p])}


@contextmanager
def _flush_denormals(device: torch.device) -> Iterator[None]:
    """Treat subnormal floats as zero while training on a CPU.

    Squared tiny gradients (Adam's second moments) land in the subnormal range, where x86
    arithmetic is ~100x slower: on a small CLIP here it made whole training steps ~10x slower
    (benchmarks/RESULTS.md). Values below 1e-38 carry no information for training.
    """
    if device.type != "cpu":
        yield
        return
    before = flushes_denormals()  # the caller's mode, given back after the fit
    if not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(before)


def _bad_step(cfg: TrainConfig, state: ckpt.TrainerState) -> None:
    where = f"step {state.step + 1} (epoch {state.epoch + 1})"
    if cfg.runtime.nan_policy == "raise":
        raise ModaltuneError(
            f"loss or gradient became NaN/inf at {where}. Lower --lr, use --precision fp32, check the data, "
            "or pass --nan-policy skip to skip such steps"
        )
    state.bad_steps_in_a_row += 1
    state.skipped_steps += 1
    if state.bad_steps_in_a_row >= cfg.runtime.max_bad_steps:
        raise ModaltuneError(
            f"{state.bad_steps_in_a_row} optimizer steps in a row had a NaN/inf loss (last at {where}); "
            "training is diverging: lower --lr or check the data"
        )
