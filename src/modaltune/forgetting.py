"""Keeping what the base model knew: old-task scoring, rehearsal data, WiSE-FT and L2-SP.

The *old task* is any task of the target's model family, on data of the base model's original job
(captions it was pretrained on, classes it already named). It is attached to the model being
adapted (``Task.attach``: same backbone, its own frozen head), so it can be scored before and after
training (the forgetting report) and rehearsed during training (``--replay``).

WiSE-FT (Wortsman et al., 2022) and L2-SP (Li et al., 2018) both need the weights training started
from; `Anchor` keeps a copy of exactly the parameters that train.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from modaltune.data.rows import Row
from modaltune.errors import ConfigError, DataError
from modaltune.tasks.base import Loaded, Task, create_task, family_tasks, task_class

#: WiSE-FT auto: the mixing coefficients tried (0 = base weights, 1 = fine-tuned weights).
WISE_FT_GRID = tuple(round(0.1 * i, 1) for i in range(11))
#: WiSE-FT auto: validation scores this close count as equal (the least a score can be trusted to,
#: also when its sampling error cannot be bounded, e.g. CIDEr).
WISE_FT_TOLERANCE = 0.005
#: Metrics that are means over examples of per-example scores in [0, 1]: their standard error is at
#: most sqrt(p (1 - p) / n), so it can be bounded from the score and the number of examples.
MEANS_OF_UNIT_SCORES = frozenset({"accuracy", "vqa_accuracy", "r_mean"})


# --------------------------------------------------------------------------- the old task


@dataclass
class OldTask:
    """Data of the base model's original task, read as a task of the target's family."""

    task: Task
    rows: list[Row]
    source: str

    @property
    def name(self) -> str:
        return self.task.name

    @property
    def metric(self) -> str:
        return self.task.primary_metric


def infer_old_task_type(data: str | Path, target: type[Task], explicit: str | None = None) -> str:
    """The task the old data is read as: ``explicit``, else the first of the target's family
    (the target's own task first) whose required fields the data has."""
    from modaltune.data import discover_splits, read_rows

    family = getattr(target, "family", None)
    candidates = family_tasks(family) if family else [target.name]
    if explicit is not None:
        if explicit not in candidates:
            raise ConfigError(
                f"--old-task-type {explicit!r} is not a task of the {family!r} family of the target task "
                f"{target.name!r}; choose one of {', '.join(candidates)}"
            )
        return explicit
    splits = discover_splits(data) if Path(data).is_dir() else {}
    split = next((s for s in ("test", "val", "train") if s in splits), None)
    rows, _, _ = read_rows(data, split=split, require=())
    if not rows:
        raise DataError(f"old-task data {data} has no readable rows")
    ordered = [target.name] + [c for c in candidates if c != target.name]
    for name in ordered:
        if all(f.present(rows[0]) for f in task_class(name).fields):
            return name
    raise DataError(
        f"old-task data {data} does not fit any task of the {family!r} family ({', '.join(candidates)}): "
        "give it labels (classify) or captions (retrieve), or name the task with --old-task-type"
    )


def load_old_task(data: str | Path, target: type, *, explicit: str | None = None, purpose: str = "eval",
                  prompt_template: str | None = None, skip_bad: bool = False) -> OldTask:
    """Rows of the old task: its test/ (else val/, else everything) to score, its train/ to rehearse."""
    from modaltune.data import discover_splits, load_dataset

    name = infer_old_task_type(data, target, explicit)
    cls = task_class(name)
    splits = discover_splits(data) if Path(data).is_dir() else {}
    order = ("test", "val") if purpose == "eval" else ("train",)
    split = next((s for s in order if s in splits), None)
    if split is None and splits:
        split = next(iter(splits))
    rows, _ = load_dataset(data, require=cls.fields, split=split, skip_bad=skip_bad)
    # What the task learns from rows (a detector's categories: the old data's own classes).
    options: dict[str, Any] = dict(cls.options_from_rows(rows))
    if cls.uses_labels:
        options["labels"] = sorted({r.label for r in rows})
        if prompt_template is not None:
            options["prompt_template"] = prompt_template
    where = f"{data}" + (f" ({split}/)" if split else "")
    return OldTask(task=create_task(name, **options), rows=rows, source=where)


def score_old_task(old: OldTask, loaded: Loaded, *, batch_size: int = 64, workers: int = 0) -> dict[str, Any]:
    """The old task's metrics on the model in ``loaded`` (through its current backbone)."""
    from modaltune.inference import evaluate_rows

    return evaluate_rows(old.task, old.task.attach(loaded), old.rows, batch_size=batch_size, workers=workers)


def rehearsable(old: OldTask, loaded: Loaded) -> bool:
    """Whether rehearsing ``old`` can change anything: the old task, attached to the model being
    adapted, reads at least one parameter that trains. Under a linear probe only the target's head
    trains and the old task never reads it, so rehearsal would cost time and change nothing."""
    return any(p.requires_grad for p in old.task.attach(loaded).model.parameters())


def forgetting_report(old: OldTask, before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """Before/after of the old task's primary metric; ``drop`` > 0 means the model forgot."""
    metric = old.metric
    report: dict[str, Any] = {"old_task": old.source, "task": old.name, "metric": metric,
                              "after": after.get(metric), "before": None, "drop": None,
                              "relative_drop": None, "rows": len(old.rows)}
    if before is not None:
        b, a = float(before[metric]), float(after[metric])
        report.update(before=b, drop=round(b - a, 6), relative_drop=round((b - a) / b, 6) if b else None)
        # Every other number the old task reports, before and after (a chat model's loss, exact match).
        report["metrics"] = {name: {"before": value, "after": after[name]} for name, value in before.items()
                             if name != metric and _number(value) and _number(after.get(name))}
    return report


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------- rehearsal


def replay_split(batch_size: int, ratio: float) -> tuple[int, int]:
    """(target examples, old examples) per micro-batch for ``ratio`` of old examples.

    The target keeps the whole ``batch_size`` and the old examples come on top, so turning
    rehearsal on does not change how the target data is consumed (steps per epoch, schedule)."""
    if not 0 < ratio < 1:
        raise ConfigError(f"--replay-ratio must be between 0 and 1 (exclusive), got {ratio}")
    old = round(batch_size * ratio / (1 - ratio))
    if old < 1:
        raise ConfigError(
            f"--replay-ratio {ratio} with --batch-size {batch_size} leaves no room for old examples in a "
            "batch; raise the batch size or the ratio"
        )
    return batch_size, old


def replay_indices(n_old: int, per_batch: int, *, seed: int, epoch: int, micro_batch: int) -> list[int]:
    """Old-row indices for one micro-batch: a pure function of (seed, epoch, micro-batch), so a
    resumed run replays exactly what an uninterrupted one does. Within an epoch the old rows are
    visited as a chain of seeded permutations, so every old row is seen before any repeats."""
    from modaltune.trainer.batches import epoch_order

    out = []
    cache: dict[int, list[int]] = {}
    for position in range(micro_batch * per_batch, (micro_batch + 1) * per_batch):
        cycle = position // n_old
        if cycle not in cache:
            cache[cycle] = epoch_order(n_old, seed=seed + 7919, epoch=epoch * 100_003 + cycle)
        out.append(cache[cycle][position % n_old])
    return out


# --------------------------------------------------------------------------- anchor: WiSE-FT, L2-SP


def _keeps_finetuned(name: str) -> bool:
    # LoRA's update is scale * B @ A with B starting at zero: interpolating B alone (A kept) gives
    # exactly W + alpha * delta, the WiSE-FT mix of the merged weights. Interpolating A too would
    # scale the update by alpha squared.
    return "lora_A" in name or "lora_embedding_A" in name


@dataclass
class Anchor:
    """The trainable parameters as training found them (the pretrained starting point)."""

    weights: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def capture(cls, model: nn.Module) -> Anchor:
        return cls({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    def to(self, device: torch.device | str) -> Anchor:
        self.weights = {n: w.to(device) for n, w in self.weights.items()}
        return self

    def l2sp_penalty(self, model: nn.Module, strength: float) -> torch.Tensor:
        """strength/2 * sum ||theta - theta_0||^2 over the trainable parameters (autograd-ready)."""
        total = None
        for name, param in model.named_parameters():
            if name in self.weights and param.requires_grad:
                term = (param.float() - self.weights[name].float()).pow(2).sum()
                total = term if total is None else total + term
        if total is None:
            return torch.zeros(())
        return 0.5 * strength * total

    def check_lora_start(self) -> None:
        for name, weight in self.weights.items():
            if "lora_B" in name and bool(weight.any()):
                raise ConfigError("WiSE-FT over LoRA needs adapters initialised with B = 0 (PEFT's default)")

    @torch.no_grad()
    def interpolate(self, model: nn.Module, finetuned: dict[str, torch.Tensor], alpha: float) -> None:
        """Set the trainable parameters to (1 - alpha) * anchor + alpha * fine-tuned, in place."""
        for name, param in model.named_parameters():
            if name not in self.weights:
                continue
            tuned = finetuned[name].to(param.device)
            if _keeps_finetuned(name):
                param.copy_(tuned)
            else:
                base = self.weights[name].to(param.device)
                # Endpoints copied exactly, not computed: alpha 0 and 1 reproduce the weights bit for bit.
                param.copy_(base if alpha == 0 else tuned if alpha == 1 else torch.lerp(base, tuned, alpha))


def trainable_state(model: nn.Module, names: Sequence[str]) -> dict[str, torch.Tensor]:
    wanted = set(names)
    return {n: p.detach().clone() for n, p in model.named_parameters() if n in wanted}


@dataclass
class WiseFtChoice:
    alpha: float
    rule: str
    sweep: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha, "rule": self.rule, "sweep": self.sweep}


def score_tolerance(score: float, rows: int | None, metric: str | None) -> float:
    """How far below ``score`` a validation score is still indistinguishable from it: one standard
    error of ``score`` measured on ``rows`` examples where that can be bounded, never below
    ``WISE_FT_TOLERANCE``."""
    if not rows or metric not in MEANS_OF_UNIT_SCORES:
        return WISE_FT_TOLERANCE
    p = min(max(score, 0.0), 1.0)
    return max(WISE_FT_TOLERANCE, math.sqrt(p * (1 - p) / rows))


def choose_alpha(sweep: list[dict[str, Any]], *, max_forgetting: float | None, rows: int | None = None,
                 metric: str | None = None) -> tuple[float, str]:
    """Pick alpha from sweep entries {alpha, target, drop (None without an old task)}: the largest
    alpha whose validation target score is within one standard error (``score_tolerance``) of the
    best, among the alphas whose old-task drop fits ``max_forgetting`` when there is a budget.

    Validation splits are small, and on a couple of hundred examples a few predictions decide which
    alpha scores highest; the fine-tuned end (alpha 1, whose checkpoint training already chose on
    the same split) stays unless interpolating shows a gain larger than that noise, or the budget
    calls for less forgetting. Without a budget the old-task drop is reported, not traded for."""
    candidates, why = sweep, "best target score on validation data"
    if max_forgetting is not None and all(e["drop"] is not None for e in sweep):
        # alpha 0 (the base) forgets nothing, so the budget can always be met.
        candidates = [e for e in sweep if e["drop"] <= max_forgetting + 1e-12]
        why = f"best target score on validation data with an old-task drop of at most {max_forgetting}"
    top = max(e["target"] for e in candidates)
    tolerance = score_tolerance(top, rows, metric)
    best = max((e for e in candidates if e["target"] >= top - tolerance - 1e-12), key=lambda e: e["alpha"])
    noise = "one standard error of the score" if tolerance > WISE_FT_TOLERANCE else "a tie"
    return best["alpha"], f"{why}: the largest alpha within {tolerance:.3f} ({noise}) of the best"


def wise_ft(
    model: nn.Module, anchor: Anchor, *, alpha: float | str, target_score: Callable[[], float],
    old_drop: Callable[[], float | None] | None = None, max_forgetting: float | None = None,
    rows: int | None = None, metric: str | None = None,
) -> WiseFtChoice:
    """Mix the fine-tuned weights in ``model`` with ``anchor`` at ``alpha`` (or the best one found by
    sweeping ``WISE_FT_GRID``, see ``choose_alpha``: ``target_score`` is ``metric`` on ``rows``
    validation examples); leaves ``model`` at the chosen mix."""
    anchor.check_lora_start()
    finetuned = trainable_state(model, list(anchor.weights))
    if alpha != "auto":
        anchor.interpolate(model, finetuned, float(alpha))
        return WiseFtChoice(float(alpha), "given", [])
    sweep = []
    for a in WISE_FT_GRID:
        anchor.interpolate(model, finetuned, a)
        drop = old_drop() if old_drop is not None else None
        sweep.append({"alpha": a, "target": round(float(target_score()), 6),
                      "drop": None if drop is None else round(float(drop), 6)})
    chosen, rule = choose_alpha(sweep, max_forgetting=max_forgetting, rows=rows, metric=metric)
    anchor.interpolate(model, finetuned, chosen)
    return WiseFtChoice(chosen, rule, sweep)
