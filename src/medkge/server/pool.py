"""The worker pool: scoring jobs on ``workers`` threads, off the event loop, so the server answers while it
computes. Single queries that wait for a worker are scored together as one batch when one is free (no added
wait: a batch is what piled up while the workers were busy; an even share for each free worker, at most 64)."""

import asyncio
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from ..inference import CHUNK
from .errors import ApiError


@dataclass
class _Job:
    run: Callable[[], Any] | None  # a job of its own (POST /predict, /score, /similar)
    item: Any  # or one batchable item (a GET /predict query), scored with the others waiting
    future: asyncio.Future
    size: int = 1


@dataclass
class Pool:
    """Runs jobs on ``workers`` threads; ``batch(items)`` answers several batchable items at once.
    At most ``max_pending`` queries wait or are being scored, all requests together (beyond: 503)."""

    batch: Callable[[Sequence[Any]], list[Any]]
    workers: int
    max_pending: int
    batching: bool = True
    pending: int = 0  # queries waiting or being scored
    active: int = 0  # workers busy
    queue: deque = field(default_factory=deque)
    executor: ThreadPoolExecutor | None = None
    threads: int = 0  # torch threads per worker

    def __post_init__(self):
        self.executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="medkge-score")
        self.threads = self.executor.submit(torch.get_num_threads).result()  # as a worker sees it

    async def one(self, item: Any) -> Any:
        """The answer to one batchable item."""
        if not self.batching:
            return (await self.run(lambda: self.batch([item])))[0]
        return await self._submit(_Job(None, item, asyncio.get_running_loop().create_future()))

    async def run(self, fn: Callable[[], Any], size: int = 1) -> Any:
        """``fn()`` on a worker; ``size``: the queries it scores (for the pending limit)."""
        return await self._submit(_Job(fn, None, asyncio.get_running_loop().create_future(), max(1, size)))

    async def _submit(self, job: _Job) -> Any:
        if self.pending + job.size > self.max_pending:
            raise ApiError(
                503, f"server busy: {self.pending} queries waiting or being scored (at most {self.max_pending})"
            )
        self.pending += job.size
        self.queue.append(job)
        self._dispatch()
        try:
            return await job.future
        finally:
            self.pending -= job.size

    def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while self.queue and self.active < self.workers:
            first = self.queue.popleft()
            if first.future.done():  # its client went away while it waited
                continue
            jobs = [first]
            if first.run is None:  # take waiting single items along: a fair share for each free worker
                waiting = 1 + sum(j.run is None for j in self.queue)
                share = min(CHUNK, math.ceil(waiting / (self.workers - self.active)))
                rest: deque = deque()
                while self.queue:
                    job = self.queue.popleft()
                    if not job.future.done():
                        (jobs if job.run is None and len(jobs) < share else rest).append(job)
                self.queue = rest
                work = lambda items=[j.item for j in jobs]: self.batch(items)  # noqa: E731
            else:
                work = first.run
            self.active += 1
            done = loop.run_in_executor(self.executor, work)
            done.add_done_callback(lambda task, jobs=jobs: self._finish(task, jobs))

    def _finish(self, task: asyncio.Future, jobs: list[_Job]) -> None:
        self.active -= 1
        error = None if task.cancelled() else task.exception()
        if task.cancelled() or error:
            results = [None] * len(jobs)
        else:
            results = task.result() if jobs[0].run is None else [task.result()]
        for job, result in zip(jobs, results, strict=True):
            if job.future.done():  # the client went away
                continue
            if task.cancelled():  # shutting down
                job.future.cancel()
            elif error:
                job.future.set_exception(error)
            else:
                job.future.set_result(result)
        self._dispatch()

    def shutdown(self) -> None:
        assert self.executor is not None
        self.executor.shutdown(wait=False, cancel_futures=True)
