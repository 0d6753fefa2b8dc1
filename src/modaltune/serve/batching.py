"""Dynamic batching: inputs of requests that arrive together go through the model as one batch.

The first job to arrive opens a batch and waits up to ``wait_s`` for others; the batch closes earlier
once it holds ``max_batch`` inputs. Only jobs with the same key (the same per-request task options,
e.g. the same candidate labels) share a batch; the others keep their place for the next one. All model
work runs on one thread, so a model never runs two batches at once. A batch that fails is rerun job by
job, so one bad input fails its own request and no other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

#: Runs one batch: (key, items) -> one result per item, in order.
Runner = Callable[[Hashable, list[Any]], list[Any]]


@dataclass
class _Job:
    key: Hashable
    items: list[Any]
    future: asyncio.Future[tuple[list[Any], int]]
    waiting_since: float = field(default=0.0)


class Batcher:
    """Queue jobs (one request's inputs) and run them in batches of at most ``max_batch`` inputs."""

    def __init__(self, runner: Runner, *, max_batch: int, wait_s: float) -> None:
        self.runner = runner
        self.max_batch = max_batch
        self.wait_s = wait_s
        self._pending: deque[_Job] = deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        #: Sizes of the batches run so far (inputs per model call), for /health and the tests.
        self.batch_sizes: list[int] = []

    async def start(self) -> None:
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modaltune-model")
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            if not job.future.done():
                job.future.cancel()
        self._pending.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    async def submit(self, key: Hashable, items: Sequence[Any]) -> tuple[list[Any], int]:
        """The results of ``items`` (in order) and the size of the batch they ran in. Cancelling the
        awaiting task (a timeout) drops the job if it has not reached the model yet."""
        if self._arrived is None:
            raise RuntimeError("the batcher is not started")
        if not 0 < len(items) <= self.max_batch:
            raise ValueError(f"a job holds 1 to {self.max_batch} items, got {len(items)}")
        loop = asyncio.get_running_loop()
        job = _Job(key, list(items), loop.create_future(), loop.time())
        self._pending.append(job)
        self._arrived.set()
        return await job.future

    async def _loop(self) -> None:
        assert self._arrived is not None
        loop = asyncio.get_running_loop()
        while True:
            self._drop_cancelled()
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            first = self._pending[0]
            deadline = first.waiting_since + self.wait_s
            while self._count(first.key) < self.max_batch and loop.time() < deadline:
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout=max(0.0, deadline - loop.time()))
            batch = self._take(first.key)
            if batch:
                await self._run(batch)

    def _drop_cancelled(self) -> None:
        self._pending = deque(job for job in self._pending if not job.future.done())

    def _count(self, key: Hashable) -> int:
        return sum(len(job.items) for job in self._pending if job.key == key and not job.future.done())

    def _take(self, key: Hashable) -> list[_Job]:
        """The oldest jobs of ``key`` that fit in one batch, removed from the queue."""
        taken: list[_Job] = []
        size = 0
        kept: deque[_Job] = deque()
        for job in self._pending:
            if job.future.done():
                continue
            if job.key == key and size + len(job.items) <= self.max_batch:
                taken.append(job)
                size += len(job.items)
            else:
                kept.append(job)
        self._pending = kept
        return taken

    async def _run(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        items = [item for job in jobs for item in job.items]
        try:
            results = await loop.run_in_executor(self._executor, self.runner, jobs[0].key, items)
            if len(results) != len(items):
                raise RuntimeError(f"the model returned {len(results)} results for {len(items)} inputs")
        except Exception as exc:
            if len(jobs) == 1:
                _settle(jobs[0], exc=exc)
                return
            # One bad input must not fail the requests batched with it: rerun each on its own.
            logger.info("a batch of %d requests failed (%s); running them one by one", len(jobs), exc)
            for job in jobs:
                await self._run([job])
            return
        self.batch_sizes.append(len(items))
        start = 0
        for job in jobs:
            _settle(job, result=(results[start:start + len(job.items)], len(items)))
            start += len(job.items)


def _settle(job: _Job, *, result: Any = None, exc: BaseException | None = None) -> None:
    if job.future.done():  # its request timed out meanwhile
        return
    if exc is not None:
        job.future.set_exception(exc)
    else:
        job.future.set_result(result)
