"""Admission control: a bounded queue in front of a fixed number of inference workers.

Requests wait in an asyncio queue of `queue_size`; `workers` tasks take them one at a time
and run them in a thread pool of the same size, so inference never blocks the event loop
and never runs more than `workers` at once. A full queue refuses at once (429 with a
Retry-After estimated from recent service times); a request past its deadline gets 504
and its cancel event is set, so a queued job is skipped and a running one stops at its
next segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from service.errors import QueueFullError, RequestTimeoutError

if TYPE_CHECKING:
    from collections.abc import Callable

    from service.metrics import Metrics

T = TypeVar("T")


@dataclass
class _Job(Generic[T]):
    fn: Callable[[threading.Event], T]
    future: asyncio.Future[T]
    enqueued: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)


class Scheduler:
    """Run blocking jobs on `workers` threads behind a queue of `queue_size` waiting places."""

    def __init__(self, workers: int, queue_size: int, metrics: Metrics) -> None:
        self.workers = workers
        self.queue_size = queue_size
        self._metrics = metrics
        self._queue: asyncio.Queue[_Job[Any]] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = 0
        # Exponentially weighted mean service time, for Retry-After.
        self._mean_service = 5.0

    async def start(self) -> None:
        # maxsize 0 would mean "unbounded" to asyncio: the waiting room is checked by hand.
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="inference")
        self._tasks = [asyncio.create_task(self._work(), name=f"inference-{i}") for i in range(self.workers)]
        self._metrics.queue_capacity.set(self.queue_size)
        self._metrics.queue_depth.set(0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._queue is not None:
            while not self._queue.empty():
                job = self._queue.get_nowait()
                if not job.future.done():
                    job.future.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._metrics.queue_capacity.set(0)
        self._metrics.queue_depth.set(0)

    @property
    def depth(self) -> int:
        """Jobs waiting for a worker."""
        return self._queue.qsize() if self._queue is not None else 0

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return self._busy

    def has_room(self) -> bool:
        """Whether a new job would be admitted now (free worker or free waiting place)."""
        return self.depth + self._busy < self.workers + self.queue_size

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the time to drain what is ahead of it."""
        ahead = self.depth + self._busy
        return max(1, min(300, math.ceil(self._mean_service * ahead / self.workers)))

    def check_room(self) -> None:
        """Raise QueueFullError now, before the upload is read, when a job would be refused."""
        if not self.has_room():
            raise QueueFullError(self.retry_after())

    async def submit(self, fn: Callable[[threading.Event], T], time_limit: float) -> T:
        """Run `fn(cancel_event)` on a worker; return its result.

        Raises QueueFullError when no place is free, RequestTimeoutError past `time_limit`
        seconds (queue wait included), and whatever `fn` raises.
        """
        assert self._queue is not None, "scheduler not started"
        self.check_room()
        job: _Job[T] = _Job(fn, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        self._metrics.queue_depth.set(self._queue.qsize())
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), time_limit)
        except TimeoutError:
            raise RequestTimeoutError(
                f"the request took longer than its {time_limit:.0f} s limit and was stopped"
            ) from None
        finally:
            # On timeout or client disconnect: a queued job is skipped, a running one stops
            # early, and its eventual result or error is dropped with the cancelled future.
            job.cancel.set()
            if not job.future.done():
                job.future.cancel()

    async def _work(self) -> None:
        assert self._queue is not None and self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            job = await self._queue.get()
            self._metrics.queue_depth.set(self._queue.qsize())
            if job.cancel.is_set() or job.future.done():
                continue
            started = time.monotonic()
            self._metrics.queue_wait.observe(started - job.enqueued)
            self._busy += 1
            try:
                result = await loop.run_in_executor(self._executor, job.fn, job.cancel)
            except Exception as exc:
                if not job.future.done():
                    job.future.set_exception(exc)
            else:
                if not job.future.done():
                    job.future.set_result(result)
            finally:
                self._busy -= 1
                elapsed = time.monotonic() - started
                self._mean_service = 0.8 * self._mean_service + 0.2 * elapsed
