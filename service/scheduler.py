"""Admission control and the inference workers: who runs next, and who is refused.

`workers` asyncio tasks take work from per-priority queues and run it in a thread pool of the
same size, so inference never blocks the event loop and never runs more than `workers` at once.

Priorities (lower runs first), and what keeps each class from crowding out the others:
- INTERACTIVE: a client waits on the line (file requests, a live stream's finished turn). These
  hold an admission ticket from decoding to the answer; `workers + queue_size` tickets exist, and
  when none is free the request is refused at once (429 with a Retry-After estimated from recent
  service times). Decoding counts: a request being decoded holds its ticket. Waiting requests go
  by highest response ratio (ASR_INTERACTIVE_ORDER=fair): short ones pass long ones, and a long one
  gains with every second it waits; `arrival` keeps first come, first served.
- STREAM: live partial hypotheses; they hold at most `workers - 1` workers (1 with one worker).
- BATCH: job windows; at most `workers - 1` workers while requests keep arriving (any in the last
  minute), every worker once they have stopped, and, so that jobs are not starved under a steady
  stream of requests, `batch_share` of the dispatches while both kinds wait.
- IDLE: background scoring; only when nothing else waits, one worker at most, and cancelled
  (reason "preempted") when interactive work arrives and no worker is free.

Every piece of work carries a CancelToken: past its time limit, when its client hangs up or when
the service drains, the token is cancelled; a queued job is then skipped and a running one stops
at its next segment, while the caller gets its answer at once.

Dynamic batching (ASR_BATCH_MAX_SIZE; 1 turns it off): a job may say how it can share an engine
call (`Batchable`: a key, its item, the function that runs many items at once). When a worker
takes such a job, it takes with it the waiting jobs of the same priority and key (same model,
compatible options), most urgent first, and runs them as one call; callers never know. A batch
takes no more than its share of the waiting jobs while other workers are free (so that two idle
workers split a burst rather than one taking it all), no more than ASR_BATCH_MAX_SIZE, and, while
job windows wait, no more interactive items than their share of the turns allows; idle work is
never batched, so that a request preempting it waits for one clip at most. A worker waits
up to ASR_BATCH_WAIT_MS for more only when every other worker is busy and admitted requests are
still on their way (being decoded); at concurrency 1 it never waits. A job cancelled while its
batch is queued or running leaves it: the runner skips it and its result is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from service.cancellation import PREEMPTED, SHUTTING_DOWN, TIMEOUT, CancelToken
from service.errors import QueueFullError, error_for_cancellation

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Hashable

    from service.metrics import Metrics

T = TypeVar("T")
ItemT = TypeVar("ItemT")
# After this long without an interactive request, batch work may take every worker.
QUIET_SECONDS = 60.0


class Priority(enum.IntEnum):
    INTERACTIVE = 0
    STREAM = 1
    BATCH = 2
    IDLE = 3


class Preempted(Exception):
    """IDLE work gave its worker to interactive work; the caller may try again later."""


@dataclass(frozen=True)
class Batchable(Generic[ItemT, T]):
    """How a job may share an engine call: jobs of one priority with equal `key`s (the same model
    and options that one call can serve) may run together as `run([item, ...], cancels)`, which
    returns one result, or the exception that item met, per item in order. Alone, a job runs its
    own function as ever. `observe` hears each call's size (asr_batch_size)."""

    key: Hashable
    item: ItemT
    run: Callable[[list[ItemT], list[threading.Event]], list[T | Exception]]
    observe: Callable[[int], None] | None = None


@dataclass
class _Job(Generic[T]):
    fn: Callable[[threading.Event], T]
    future: asyncio.Future[T]
    token: CancelToken
    priority: Priority
    cost: float | None = None  # seconds of audio, when known: what the job will take, roughly
    enqueued: float = field(default_factory=time.monotonic)
    batch: Batchable[Any, T] | None = None


class Ticket:
    """A place among the interactive requests the service admits at once; release it when done."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler: Scheduler | None = scheduler

    def release(self) -> None:
        if self._scheduler is not None:
            self._scheduler._release_ticket()
            self._scheduler = None

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Scheduler:
    """Run blocking jobs on `workers` threads, by priority, behind `queue_size` waiting places."""

    def __init__(
        self,
        workers: int,
        queue_size: int,
        metrics: Metrics,
        batch_share: float = 0.25,
        order: Literal["fair", "arrival"] = "fair",
        batch_max_size: int = 8,
        batch_wait: float = 0.01,
    ) -> None:
        self.workers = workers
        self.queue_size = queue_size
        self.batch_share = batch_share
        self.order = order
        self.batch_max_size = batch_max_size
        self.batch_wait = batch_wait  # seconds a worker may wait for a batch to fill
        self._metrics = metrics
        self._waiting: dict[Priority, deque[_Job[Any]]] = {p: deque() for p in Priority}
        self._running: dict[Priority, int] = dict.fromkeys(Priority, 0)  # workers, one per call
        self._running_items: dict[Priority, int] = dict.fromkeys(Priority, 0)  # jobs in those calls
        self._running_tokens: dict[Priority, set[CancelToken]] = {p: set() for p in Priority}
        self._tickets = 0
        self._batch_credit = 0.0
        self._last_interactive = -QUIET_SECONDS
        self._changed: asyncio.Condition | None = None
        self._ticket_freed: asyncio.Event | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Exponentially weighted mean interactive service time, for Retry-After.
        self._mean_service = 5.0
        # ... and engine seconds per audio second, for the expected time of a waiting request.
        self._mean_rtf = 0.2

    # ---- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        self._changed = asyncio.Condition()
        self._ticket_freed = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="inference")
        self._tasks = [asyncio.create_task(self._work(), name=f"inference-{i}") for i in range(self.workers)]
        self._metrics.queue_capacity.set(self.queue_size)
        self._metrics.queue_depth.set(0)
        self._metrics.workers.set(self.workers)
        self._metrics.workers_busy.set(0)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for queue in self._waiting.values():
            while queue:
                job = queue.popleft()
                job.token.cancel(SHUTTING_DOWN)
        for tokens in self._running_tokens.values():
            for token in list(tokens):
                token.cancel(SHUTTING_DOWN)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        self._metrics.queue_capacity.set(0)
        self._metrics.queue_depth.set(0)
        self._metrics.workers.set(0)
        self._metrics.workers_busy.set(0)

    # ---- admission -------------------------------------------------------------------

    @property
    def depth(self) -> int:
        """Interactive jobs waiting for a worker."""
        return len(self._waiting[Priority.INTERACTIVE])

    @property
    def busy(self) -> int:
        """Jobs running now, of every priority."""
        return sum(self._running.values())

    @property
    def capacity(self) -> int:
        return self.workers + self.queue_size

    def has_room(self) -> bool:
        """Whether a new interactive request would be admitted now."""
        return self._tickets < self.capacity

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the time to drain what is ahead of it."""
        return max(1, min(300, math.ceil(self._mean_service * self._tickets / self.workers)))

    def check_room(self) -> None:
        """Raise QueueFullError now (before an upload is read) when a request would be refused."""
        if not self.has_room():
            raise QueueFullError(self.retry_after())

    def admit(self) -> Ticket:
        """Take an admission ticket; raises QueueFullError when every place is taken."""
        self.check_room()
        self._tickets += 1
        self._last_interactive = time.monotonic()
        return Ticket(self)

    async def admit_waiting(self, seconds: float) -> Ticket:
        """Take a ticket, waiting up to `seconds` for one to free up (for clients that never retry a
        429); raises QueueFullError when none did."""
        assert self._ticket_freed is not None, "scheduler not started"
        deadline = time.monotonic() + seconds
        while not self.has_room():
            left = deadline - time.monotonic()
            if left <= 0:
                raise QueueFullError(self.retry_after())
            self._ticket_freed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ticket_freed.wait(), left)
        return self.admit()

    def _release_ticket(self) -> None:
        self._tickets -= 1
        if self._ticket_freed is not None:
            self._ticket_freed.set()

    # ---- running ---------------------------------------------------------------------

    async def run(
        self,
        fn: Callable[[threading.Event], T],
        *,
        token: CancelToken,
        priority: Priority = Priority.INTERACTIVE,
        time_limit: float | None = None,
        cost: float | None = None,
        batch: Batchable[Any, T] | None = None,
    ) -> T:
        """Run `fn(cancel_event)` on a worker and return its result. `cost` is the audio's length in
        seconds when known: waiting requests are ordered by it (service.scheduler, "fair"). With
        `batch`, the job may instead run inside one call with compatible jobs (`Batchable`).

        Raises the answer for a cancelled token (RequestTimeoutError past `time_limit` seconds,
        queue wait included; ClientGoneError; ShuttingDownError), Preempted for IDLE work that
        gave way, and whatever `fn` raises.
        """
        assert self._changed is not None, "scheduler not started"
        loop = asyncio.get_running_loop()
        job: _Job[T] = _Job(fn, loop.create_future(), token, priority, cost, batch=batch)
        timer = loop.call_later(time_limit, token.cancel, TIMEOUT) if time_limit is not None else None
        async with self._changed:
            self._waiting[priority].append(job)
            self._gauge_depth()
            if priority == Priority.INTERACTIVE:
                self._preempt_idle()
            self._changed.notify_all()
        stop = asyncio.ensure_future(token.wait())
        try:
            waits: list[asyncio.Future[Any]] = [job.future, stop]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if job.future.done() and not token.cancelled:
                return job.future.result()
            if token.reason == PREEMPTED:
                raise Preempted()
            raise error_for_cancellation(token.reason, time_limit)
        finally:
            if timer is not None:
                timer.cancel()
            stop.cancel()
            # A job still queued is skipped; one still running stops at its next segment (the
            # cancel event is set); its eventual result is dropped with the future.
            if not job.future.done():
                token.cancel(token.reason or SHUTTING_DOWN)
                job.future.cancel()
                with contextlib.suppress(ValueError):  # ValueError: it had left the queue already
                    self._waiting[priority].remove(job)
                self._gauge_depth()

    def _gauge_depth(self) -> None:
        self._metrics.queue_depth.set(self.depth)

    def _limit(self, priority: Priority) -> int:
        if priority == Priority.INTERACTIVE:
            return self.workers
        if priority == Priority.IDLE:
            return 1
        quiet = time.monotonic() - self._last_interactive > QUIET_SECONDS
        if priority == Priority.BATCH and quiet and not self._waiting[Priority.INTERACTIVE]:
            return self.workers
        return max(1, self.workers - 1)

    def _preempt_idle(self) -> None:
        if self.busy >= self.workers:
            for token in list(self._running_tokens[Priority.IDLE]):
                token.cancel(PREEMPTED)

    def _pick(self) -> list[_Job[Any]] | None:
        """The next job to run with the jobs that share its call, or None when nothing may run now."""
        for queue in self._waiting.values():
            while queue and (queue[0].token.cancelled or queue[0].future.done()):
                queue.popleft()
        self._gauge_depth()
        eligible = [
            p
            for p in Priority
            if self._waiting[p]
            and self._running[p] < self._limit(p)
            and (p != Priority.IDLE or not any(self._waiting[q] for q in Priority if q != Priority.IDLE))
        ]
        if not eligible:
            return None
        chosen = eligible[0]
        batch_waits = Priority.BATCH in eligible and chosen != Priority.BATCH
        if batch_waits:
            # A job window waits while more urgent work goes first: it earns a share of the turns.
            self._batch_credit += self.batch_share
            if self._batch_credit >= 1.0 - _EPSILON:
                self._batch_credit -= 1.0
                chosen = Priority.BATCH
                batch_waits = False
        queue = self._waiting[chosen]
        job = self._most_urgent(queue) if chosen == Priority.INTERACTIVE and self.order == "fair" else queue[0]
        queue.remove(job)
        picked = [job]
        # Idle work is never batched: a request that preempts it waits for no more than one clip.
        if job.batch is not None and self.batch_max_size > 1 and chosen != Priority.IDLE:
            picked += self._companions(job, 1, batch_waits)
        self._gauge_depth()
        return picked

    def _companions(self, leader: _Job[Any], size: int, batch_waits: bool) -> list[_Job[Any]]:
        """Waiting jobs that may join `leader`'s call, which holds `size` jobs so far, most urgent
        first, taken from the queue. A batch takes its share of the compatible jobs among the
        workers free for them (two idle workers split a burst), within ASR_BATCH_MAX_SIZE and,
        while job windows wait, within the turns left before theirs (batch_share counts jobs)."""
        assert leader.batch is not None
        priority = leader.priority
        queue = self._waiting[priority]
        key = leader.batch.key
        fits = [j for j in queue if j.batch is not None and j.batch.key == key and not j.token.cancelled]
        if not fits:
            return []
        free = max(1, min(self._limit(priority) - self._running[priority], self.workers - self.busy))
        room = min(self.batch_max_size, math.ceil((len(fits) + size) / free)) - size
        if batch_waits:
            room = min(room, math.ceil((1.0 - self._batch_credit - _EPSILON) / self.batch_share) - 1)
        if room <= 0:
            return []
        if priority == Priority.INTERACTIVE and self.order == "fair":
            now = time.monotonic()
            fits.sort(key=lambda j: self._ratio(j, now), reverse=True)
        taken = fits[:room]
        for job in taken:
            queue.remove(job)
        if batch_waits:
            self._batch_credit += self.batch_share * len(taken)
        return taken

    def _most_urgent(self, queue: deque[_Job[Any]]) -> _Job[Any]:
        """The waiting request with the highest response ratio, (waited + expected) / expected.

        Arrival order put a 0.65 s clip behind three long uploads for 20.6 s. Highest response ratio
        next lets a short request pass long ones that arrived a little earlier (its ratio grows
        fastest), while a long one's ratio grows with every second it waits, so it is never starved.
        """
        now = time.monotonic()
        return max(queue, key=lambda job: self._ratio(job, now))

    def _ratio(self, job: _Job[Any], now: float) -> float:
        expected = self._expected_seconds(job)
        return (now - job.enqueued + expected) / expected

    def _expected_seconds(self, job: _Job[Any]) -> float:
        if job.cost is None:
            return max(self._mean_service, 0.1)
        # A floor for fixed costs (feature extraction, the first decoder steps) of tiny clips.
        return max(job.cost * self._mean_rtf, 0.1)

    async def _next(self) -> list[_Job[Any]]:
        assert self._changed is not None
        async with self._changed:
            while (batch := self._pick()) is None:
                await self._changed.wait()
            priority = batch[0].priority
            self._running[priority] += 1
            self._running_items[priority] += len(batch)
            for job in batch:
                self._running_tokens[priority].add(job.token)
            self._metrics.workers_busy.set(self.busy)
            if batch[0].batch is not None and self.batch_max_size > 1:
                await self._fill(batch)
            return batch

    async def _fill(self, batch: list[_Job[Any]]) -> None:
        """Wait up to `batch_wait` for admitted requests still on their way (being decoded) to join
        an interactive batch, when no other worker is free to take them as they come. Called with
        the condition held; the batch already counts as running."""
        assert self._changed is not None
        leader = batch[0]
        priority = leader.priority
        if priority != Priority.INTERACTIVE or self.batch_wait <= 0:
            return
        deadline = time.monotonic() + self.batch_wait
        while len(batch) < self.batch_max_size and self.busy >= self.workers:
            # Admitted requests neither waiting nor in a call: decoding, or past their call.
            coming = self._tickets - self.depth - self._running_items[priority]
            left = deadline - time.monotonic()
            if coming <= 0 or left <= 0:
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)
            batch_waits = bool(self._waiting[Priority.BATCH]) and self._running[Priority.BATCH] < self._limit(
                Priority.BATCH
            )
            more = self._companions(leader, len(batch), batch_waits)
            batch += more
            self._running_items[priority] += len(more)
            for job in more:
                self._running_tokens[priority].add(job.token)
            self._gauge_depth()

    async def _done(self, batch: list[_Job[Any]]) -> None:
        assert self._changed is not None
        async with self._changed:
            priority = batch[0].priority
            self._running[priority] -= 1
            self._running_items[priority] -= len(batch)
            for job in batch:
                self._running_tokens[priority].discard(job.token)
            self._metrics.workers_busy.set(self.busy)
            self._changed.notify_all()

    async def _work(self) -> None:
        assert self._executor is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next()
            started = time.monotonic()
            for job in batch:
                if job.priority == Priority.INTERACTIVE:
                    self._metrics.queue_wait.observe(started - job.enqueued)
            try:
                await self._call(loop, batch)
            finally:
                if batch[0].priority == Priority.INTERACTIVE:
                    took = (time.monotonic() - started) / len(batch)  # a worker's time per request
                    self._mean_service = 0.8 * self._mean_service + 0.2 * took
                    cost = sum(job.cost or 0.0 for job in batch) / len(batch)
                    if cost:
                        self._mean_rtf = 0.8 * self._mean_rtf + 0.2 * took / cost
                await self._done(batch)

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list[_Job[Any]]) -> None:
        """Run one engine call for `batch` in the pool and hand each job its result."""
        assert self._executor is not None
        leader = batch[0]
        if leader.batch is not None and self.batch_max_size > 1 and leader.batch.observe is not None:
            leader.batch.observe(len(batch))
        if len(batch) == 1 or leader.batch is None:
            try:
                _settle(leader, await loop.run_in_executor(self._executor, leader.fn, leader.token.event))
            except Exception as exc:
                _settle(leader, exc)
            return
        items = [job.batch.item for job in batch if job.batch is not None]
        cancels = [job.token.event for job in batch]
        try:
            results = await loop.run_in_executor(self._executor, leader.batch.run, items, cancels)
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} answered {len(results)} results")
        except Exception as exc:
            results = [exc] * len(batch)
        for job, result in zip(batch, results, strict=True):
            _settle(job, result)


_EPSILON = 1e-9


def _settle(job: _Job[Any], result: Any) -> None:
    """Hand `job` its result or exception, unless its caller has stopped waiting (dropped)."""
    if job.future.done():
        return
    if isinstance(result, Exception):
        job.future.set_exception(result)
    else:
        job.future.set_result(result)
