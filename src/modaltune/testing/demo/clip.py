"""The offline end-to-end demo: pretrain a small CLIP, then adapt it every way, with few labels and with more.

No CLIP weights can be downloaded here, so the demo makes its own "pretrained" model, with
modaltune itself, and then shows what the strategies do with it:

1. a *source* world: a few thousand procedurally drawn shapes with captions
   (``modaltune.testing.synthetic``), written as an image–caption manifest;
2. a small CLIP (``modaltune.testing.tiny_clip.build_clip``: random weights, a tokenizer trained on the captions),
   pretrained contrastively on that corpus with ``api.train(task="retrieve")``. The result is
   cached, keyed by a hash of everything that defines it, so a second demo skips this step;
3. a *target* task with a domain shift: name the shape, drawn in another style (over noise), in
   two regimes that share their validation and test images: *few labels* (a handful of labelled
   images per class), where zero-shot or a linear probe is the right call, and *more labels*,
   where re-training blocks pays;
4. in each regime the advisor's recommendation, then every strategy (zero-shot, linear-probe,
   last-n, full, lora, scratch) through ``api.train`` with the same data, seed and epoch budget,
   each scored on the held-out test split, with its standard error and its gap to zero-shot;
5. a table per regime on the console, ``demo_results.json``, comparison plots and ``report.html``.

Every number in the outputs is computed by the run; nothing is hard-coded.

This module tells the story (`run_demo`); its parts are beside it: ``clip_specs`` (what runs),
``clip_key`` and ``clip_base`` (the cached pretrained base), ``clip_target`` (one regime's data, advice
and runs), ``clip_regimes`` (every run on the workers), ``clip_scores`` (how far to trust a number) and
``clip_outputs`` (tables, JSON, plots, report).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console

from modaltune.errors import ConfigError
from modaltune.testing.demo.clip_base import BaseModel, cached_base, ensure_base_model, pretrain_base
from modaltune.testing.demo.clip_key import base_key, code_fingerprint
from modaltune.testing.demo.clip_outputs import results_table, write_outputs
from modaltune.testing.demo.clip_regimes import collect_regimes, submit_regimes
from modaltune.testing.demo.clip_scores import verdict
from modaltune.testing.demo.clip_specs import (
    FULL_BASE,
    FULL_MORE_LABELS,
    FULL_TARGET,
    FULL_TARGETS,
    KEEP,
    QUICK_BASE,
    QUICK_TARGETS,
    STRATEGIES,
    BaseSpec,
)
from modaltune.testing.demo.clip_target import run_strategy, write_old_task, write_target_data

# What the package, the demo's tests and benchmarks/bench_transfer.py import from here (it held them all once).
__all__ = [
    "FULL_BASE",
    "FULL_MORE_LABELS",
    "FULL_TARGET",
    "KEEP",
    "QUICK_BASE",
    "QUICK_TARGETS",
    "STRATEGIES",
    "BaseSpec",
    "base_key",
    "code_fingerprint",
    "ensure_base_model",
    "pretrain_base",
    "run_demo",
    "run_strategy",
]


#: Written into the output folder, so a later demo knows it may replace what an earlier one wrote.
MARKER = ".modaltune-demo"
#: What the demo writes into the output folder (and so replaces on a rerun), besides each section's results file.
OUTPUTS = ("data", "runs", "plots", "logs", "demo_results.json", "report.html")


def run_demo(
    output: Path, *, quick: bool = False, console: Console | None = None, seed: int = 0, processes: int = 2
) -> list[dict[str, Any]]:
    """Run the whole demo into ``output``; return one result dict per regime and strategy (as in
    demo_results.json), the few-label regime first. ``seed`` draws the target's images and seeds its
    runs (the demo ships 0; others check its numbers); ``processes``: the workers beside the pretraining."""
    from modaltune.testing.demo.sections import SECTIONS
    from modaltune.testing.demo.workers import Workers

    console = console or Console(stderr=True)
    base_spec, shipped = (QUICK_BASE, QUICK_TARGETS) if quick else (FULL_BASE, FULL_TARGETS)
    target_specs = tuple(replace(t, seed=seed) for t in shipped)
    output = Path(output)
    started, cpu_started = time.perf_counter(), _cpu_seconds()
    _prepare_output(output, [s.results_file for s in SECTIONS])
    timings: dict[str, float] = {}
    logs = output / "logs"

    with (
        _quiet_transformers(),
        _terminated_as_exit(),
        Workers(1, threads=None) as pretrainer,
        Workers(processes) as workers,
    ):
        console.rule("[bold]1 · the pretrained base model")
        base = cached_base(base_spec, console=console)
        pretraining = None
        if base is None:
            pretraining = pretrainer.submit(
                "pretraining the base model",
                logs / "pretraining.log",
                pretrain_base,
                base_spec,
                output / "data" / "source",
            )
            console.print(
                f"pretraining a CLIP on {base_spec.captions} synthetic captioned images "
                f"({base_spec.epochs} epochs) in a worker process, its progress in {pretraining.log}; "
                "the sections that need no base model run beside it"
            )
        sections = [
            (
                section,
                workers.submit(
                    section.title, logs / f"{Path(section.results_file).stem}.log", section.run, output, quick=quick
                ),
            )
            for section in SECTIONS
        ]
        old = write_old_task(target_specs[0], base_spec, output / "data" / "old")
        targets = {
            spec.regime: write_target_data(spec, base_spec, output / "data" / "target" / spec.slug)
            for spec in target_specs
        }
        regimes = None if base is None else submit_regimes(workers, base, targets, target_specs, old, output)

        section_results = []
        for number, (section, job) in enumerate(sections, start=2):
            console.rule(f"[bold]{number} · {section.title}")
            results = job.result()
            section_results.append((section, results))
            console.print(section.table(results))
            console.print(f"{job.seconds:.0f}s in a worker ({job.cpu_seconds:.0f} CPU-seconds) · log {job.log}")
            timings[section.title] = job.seconds
        number = len(SECTIONS) + 2

        if pretraining is not None:
            console.rule(f"[bold]{number} · the pretrained base model, continued")
            number += 1
            tick = time.perf_counter()
            with console.status("waiting for the pretraining …") as status:
                while not pretraining.ready():
                    status.update(f"waiting for the pretraining: {_last_line(pretraining.log)}")
                    time.sleep(1.0)
            made = pretraining.result()
            base = BaseModel(Path(made["run_dir"]), cached=False, info=made["info"])
            timings.update(made["timings"])
            timings["waiting for the base model"] = time.perf_counter() - tick
            console.print(
                f"pretrained in {pretraining.seconds:.0f}s ({pretraining.cpu_seconds:.0f} CPU-seconds, "
                f"{made['threads']} threads): {base.info['steps']} steps, held-out retrieval "
                f"R@1 {base.info['retrieval'].get('i2t_r@1', float('nan')):.3f} (image→text); "
                f"cached in {base.run_dir} · log {pretraining.log}"
            )
            regimes = submit_regimes(workers, base, targets, target_specs, old, output)
        assert base is not None and regimes is not None  # one branch or the other set them

        first = target_specs[0]
        console.rule(
            f"[bold]{number} · target task, {' and '.join(t.regime for t in target_specs)}: the advisor, "
            f"then every strategy, {processes} at a time"
        )
        console.print(
            f"old task (what pretraining taught): name the colour, style {base_spec.styles[0]!r}, "
            f"{first.old_test_per_class} test images per class in {old}"
        )
        for spec in target_specs:
            console.print(
                f"{spec.regime}: {len(spec.classes)} shapes drawn in style [bold]{spec.style}[/]: "
                f"{spec.train_per_class} train, {spec.val_per_class} val and {spec.test_per_class} test "
                f"images per class under {targets[spec.regime]}"
            )
        tick = time.perf_counter()
        results, advices = collect_regimes(regimes, target_specs, console=console)
        timings["CLIP regimes (after the base)"] = time.perf_counter() - tick

    timings["total"] = time.perf_counter() - started
    timings["CPU-seconds, all processes"] = _cpu_seconds() - cpu_started
    for spec in target_specs:
        rows = [r for r in results if r["regime"] == spec.regime]
        console.print(results_table(rows, spec))
        console.print(verdict(rows, spec, advices[spec.regime]))
    write_outputs(output, results, base, base_spec, target_specs, timings, advices=advices, sections=section_results)
    console.print(
        f"total {timings['total']:.0f}s ({timings['CPU-seconds, all processes']:.0f} CPU-seconds) · "
        f"results in {output / 'demo_results.json'} · report {output / 'report.html'}"
    )
    return results


@contextmanager
def _terminated_as_exit() -> Iterator[None]:
    """SIGTERM ends the demo through SystemExit, so its workers are stopped too rather than left running."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished child processes (the workers, once joined)."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def _last_line(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return "starting"
    return lines[-1][:100] if lines else "starting"


def _prepare_output(output: Path, section_files: list[str]) -> None:
    """Refuse to overwrite anything the demo did not write itself; clear what an earlier demo wrote."""
    outputs = (*OUTPUTS, *section_files)
    if (output / MARKER).is_file():
        for name in outputs:
            path = output / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    else:
        clashes = [name for name in outputs if (output / name).exists()]
        if clashes:
            raise ConfigError(
                f"{output} already holds {', '.join(clashes)}, not written by the demo; choose another --output"
            )
    output.mkdir(parents=True, exist_ok=True)
    (output / MARKER).write_text("written by `modaltune demo`; a rerun replaces its outputs here\n")


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    # Every load and save would print a "Loading weights" bar; the demo shows its own progress.
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
