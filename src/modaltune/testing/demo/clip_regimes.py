"""Every run of every CLIP demo regime on the demo's workers: submitted longest first, collected and
printed as each finishes, then scored per regime."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from modaltune.testing.demo.clip_base import BaseModel
from modaltune.testing.demo.clip_scores import score_regime
from modaltune.testing.demo.clip_specs import KEEP, TargetSpec
from modaltune.testing.demo.clip_target import advice_line, advise_and_train, result_line, run_strategy


@dataclass
class RegimeJobs:
    """The runs of every regime, submitted to the workers: per regime, the job that asks the advisor (and
    trains last-n at the depth it advises), then one job per other strategy."""

    advised: dict[str, Any]  # regime -> Job returning (advice, last-n row or None)
    runs: dict[tuple[str, str], Any]  # (regime, row name) -> Job returning a row


def submit_regimes(
    workers: Any, base: BaseModel, targets: dict[str, Path], specs: tuple[TargetSpec, ...], old: Path, output: Path
) -> RegimeJobs:
    """Every run of every regime, longest first (the workers start jobs in order: the longest last would
    leave one worker idle at the end)."""
    logs = output / "logs"
    jobs: list[tuple[float, str, tuple[str, str] | None, tuple[Any, ...], dict[str, Any]]] = []
    for spec in specs:
        runs, data = output / "runs" / spec.slug, targets[spec.regime]
        steps = spec.epochs * math.ceil(len(spec.classes) * spec.train_per_class / spec.batch_size)
        shared = {"old": old}
        jobs.append(
            (steps * _COST["last-n"] + 1, spec.regime, None, (advise_and_train, base, data, spec, runs), shared)
        )
        for strategy in spec.strategies:
            if strategy != "last-n":
                jobs.append(
                    (
                        steps * _COST[strategy],
                        spec.regime,
                        (spec.regime, strategy),
                        (run_strategy, strategy, base, data, spec, runs),
                        {**shared, "progress": False},
                    )
                )
        if spec.keep:
            jobs.append(
                (
                    steps * _COST[KEEP],
                    spec.regime,
                    (spec.regime, KEEP),
                    (run_strategy, "full", base, data, spec, runs),
                    {**shared, "keep": True, "progress": False},
                )
            )
    jobs.sort(key=lambda job: -job[0])
    regimes = RegimeJobs(advised={}, runs={})
    for _, regime, key, (function, *args), kwargs in jobs:
        if key is None:
            name = f"the advisor and last-n, {regime}"
            regimes.advised[regime] = workers.submit(
                name, logs / f"{_slug(regime)}-advisor-last-n.log", function, *args, **kwargs
            )
        else:
            regimes.runs[key] = workers.submit(
                f"{key[1]}, {regime}", logs / f"{_slug(regime)}-{key[1]}.log", function, *args, **kwargs
            )
    return regimes


#: Relative cost of one optimizer step, for ordering the jobs (measured: full ~ scratch ~ lora, last-n
#: of most blocks a little less, the linear probe on cached features far less; the rehearsing row steps
#: on twice the rows). The fixed cost of a run (loading, evaluations, export) is in the +1 of each.
_COST = {
    "zero-shot": 0.0,
    "linear-probe": 0.15,
    "last-n": 0.7,
    "full": 1.0,
    "lora": 1.0,
    "scratch": 1.0,
    "towers": 1.0,
    KEEP: 1.8,
}


def _slug(regime: str) -> str:
    return regime.replace(" ", "-")


def collect_regimes(
    regimes: RegimeJobs, specs: tuple[TargetSpec, ...], *, console: Console
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Wait for every run, printing each result as it comes; the rows scored, in the regimes' order."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    advices: dict[str, Any] = {}
    pending = {**{(regime, "advisor"): job for regime, job in regimes.advised.items()}, **regimes.runs}
    while pending:
        done = [key for key, job in pending.items() if job.ready()]
        if not done:
            time.sleep(0.5)
            continue
        for key in done:
            job = pending.pop(key)
            if key[1] == "advisor":
                advice, row = job.result()
                advices[key[0]] = advice
                console.print(f"{key[0]:>12} · {advice_line(advice)}")
                if row is not None:
                    rows[(key[0], "last-n")] = row
                    console.print(f"{key[0]:>12} · {result_line(row)} [dim](with the advisor, {job.seconds:.0f}s)")
            else:
                rows[key] = job.result()
                console.print(f"{key[0]:>12} · {result_line(rows[key])}")
    results: list[dict[str, Any]] = []
    for spec in specs:
        names = [*spec.strategies, *([KEEP] if spec.keep else [])]
        results.extend(score_regime([rows[(spec.regime, name)] for name in names], spec, advices[spec.regime]))
    return results, advices
