"""Running the demo's independent parts side by side in worker processes.

Pretraining the CLIP base is the demo's critical path: nothing of the CLIP regimes can start before it
ends. It runs in a worker of its own at torch's default thread count (every core: its batches of 64 keep
two threads busy, and the same thread count keeps the cached base bit for bit what it was). The other
work runs in workers at one torch thread each: the sections that need no base model run beside the
pretraining (the cores stay busy through its single-threaded data loading and evaluations), and once
the base exists the CLIP strategies train side by side, two small runs at one thread each using a small
CPU better than one after the other at two. (Running the side work at a lower priority was tried: on a
busy machine it starved, and on an idle one the work is the same either way.) Each job writes its console output and
log records to a file of its own: two progress bars drawn at once on one terminal would garble.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from modaltune.errors import ModaltuneError

#: torch threads of each worker but the pretraining's.
THREADS = 1


class DemoError(ModaltuneError):
    """A part of the demo failed in a worker process; the message names its log."""


@contextmanager
def threads(count: int = THREADS) -> Iterator[None]:
    """torch runs ``count`` threads inside the block."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _start_worker(threads: int | None) -> None:
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)  # before torch is imported: OpenMP reads it once
    import torch
    from transformers.utils import logging as hf_logging

    if threads is not None:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()  # every load and save would draw a bar into the job's log


def run_logged(log: Path, job: Callable[..., Any], /, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """In a worker: ``job(*args, console=<a console on log>, **kwargs)``, modaltune's log records and,
    when it fails, its traceback also written to ``log``. Returns what the job returned, its wall
    seconds and its CPU seconds."""
    from rich.console import Console

    log.parent.mkdir(parents=True, exist_ok=True)
    wall, cpu = time.perf_counter(), time.process_time()
    with log.open("w", encoding="utf-8") as stream:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger = logging.getLogger("modaltune")
        logger.addHandler(handler)
        try:
            value = job(*args, console=Console(file=stream, width=120), **kwargs)
        except BaseException:
            stream.write(traceback.format_exc())
            raise
        finally:
            logger.removeHandler(handler)
    return value, time.perf_counter() - wall, time.process_time() - cpu


class Job:
    """One job submitted to `Workers`: what it is, where it logs, and its result once done."""

    def __init__(self, what: str, log: Path, pending: Any) -> None:
        self.what, self.log, self._pending = what, log, pending
        self.seconds = self.cpu_seconds = float("nan")  # the job's own, once it is done

    def ready(self) -> bool:
        return bool(self._pending.done())

    def result(self) -> Any:
        """The job's return value (waiting for it); a `DemoError` naming its log if it failed, or if its
        worker died (killed for memory, say: every job of that pool then fails so)."""
        try:
            value, self.seconds, self.cpu_seconds = self._pending.result()
            return value
        except Exception as exc:
            raise DemoError(f"{self.what} failed in a worker process: {type(exc).__name__}: {exc}\n"
                            f"its log, with the traceback: {self.log}\n{_tail(self.log)}") from exc


def _tail(log: Path, lines: int = 12) -> str:
    try:
        return "\n".join(log.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log was written)"


class Workers:
    """``processes`` worker processes (spawned, so no thread or lock state of this process is copied) at
    ``threads`` torch threads each (None: torch's default); jobs start in the order they are submitted.
    Leaving the block normally waits for every job; leaving it by an exception (a failed job, Ctrl-C)
    terminates the workers: a pretraining stopped so cleans up after itself (SIGTERM ends it with
    SystemExit, and the base is renamed into the cache only when complete)."""

    def __init__(self, processes: int, *, threads: int | None = THREADS) -> None:
        self._pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=_start_worker, initargs=(threads,))

    def submit(self, what: str, log: Path, job: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Job:
        """Run ``job(*args, console=..., **kwargs)`` (a module-level function) in a worker, logging to ``log``."""
        return Job(what, log, self._pool.submit(run_logged, log, job, *args, **kwargs))

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        if kind is not None:
            # Python < 3.14 has no public way to stop running jobs: terminate the workers themselves.
            for process in list((self._pool._processes or {}).values()):
                process.terminate()
        self._pool.shutdown(wait=True, cancel_futures=kind is not None)
