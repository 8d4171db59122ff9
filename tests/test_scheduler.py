"""The scheduler on its own: admission, priorities, caps, time limits and cancellation.

Batching is on (the scheduler's default ASR_BATCH_MAX_SIZE): the jobs here are batchable unless
a test says why not, so every priority and cancellation rule below is checked with jobs that
share engine calls. The batcher's own rules are in tests/test_batcher.py."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.cancellation import CLIENT_DISCONNECTED, SHUTTING_DOWN, CancelToken
from service.errors import ClientGoneError, QueueFullError, RequestTimeoutError, ShuttingDownError
from service.metrics import Metrics
from service.scheduler import Batchable, Preempted, Priority, Scheduler
from tests.conftest import until

pytestmark = pytest.mark.anyio


def run_each(fns: list[Any], cancels: list[threading.Event]) -> list[Any]:
    """One "engine call" for a batch of test jobs: each job's function in turn, in the one worker
    thread, skipping those cancelled meanwhile (as an engine drops them); an error is its own."""
    results: list[Any] = []
    for fn, cancel in zip(fns, cancels, strict=True):
        if cancel.is_set():
            results.append(RuntimeError("cancelled"))
            continue
        try:
            results.append(fn(cancel))
        except Exception as exc:
            results.append(exc)
    return results


def batchable(fn: Any, key: object = "model-a", calls: list[int] | None = None) -> Batchable[Any, Any]:
    """`fn` as a batchable job; `calls` hears the size of each call it runs in."""
    return Batchable(key, fn, run_each, None if calls is None else calls.append)


async def submit(
    scheduler: Scheduler,
    fn: Any,
    time_limit: float | None = 10,
    priority: Priority = Priority.INTERACTIVE,
    token: CancelToken | None = None,
    batched: bool = True,
    calls: list[int] | None = None,
) -> Any:
    """What the pipeline does: interactive work holds an admission ticket while it waits and runs.
    `batched` jobs may share a call with each other; `calls` hears the sizes of their calls."""
    ticket = scheduler.admit() if priority == Priority.INTERACTIVE else None
    batch = batchable(fn, calls=calls) if batched else None
    try:
        return await scheduler.run(
            fn, token=token or CancelToken(), priority=priority, time_limit=time_limit, batch=batch
        )
    finally:
        if ticket is not None:
            ticket.release()


def _sleeper(seconds: float, running: list[int], peak: list[int]) -> object:
    lock = threading.Lock()

    def job(cancel: threading.Event) -> float:
        with lock:
            running.append(1)
            peak[0] = max(peak[0], len(running))
        try:
            end = time.monotonic() + seconds
            while time.monotonic() < end and not cancel.is_set():
                time.sleep(0.005)
            return seconds
        finally:
            with lock:
                running.pop()

    return job


async def started(scheduler: Scheduler) -> Scheduler:
    await scheduler.start()
    return scheduler


async def test_runs_at_most_workers_at_once_and_queues_the_rest() -> None:
    metrics = Metrics(CollectorRegistry())
    scheduler = await started(Scheduler(workers=2, queue_size=4, metrics=metrics))
    running: list[int] = []
    peak = [0]
    try:
        # Jobs that cannot share a call (a long file's windows, say): each takes a worker of its own.
        jobs = (submit(scheduler, _sleeper(0.1, running, peak), batched=False) for _ in range(6))
        results = await asyncio.gather(*jobs)
    finally:
        await scheduler.stop()
    assert results == [0.1] * 6
    assert peak[0] == 2
    waits = metrics.registry.get_sample_value("asr_queue_wait_seconds_count")
    assert waits == 6
    # Four jobs waited behind the first two: their summed wait is at least 0.1 s each.
    assert metrics.registry.get_sample_value("asr_queue_wait_seconds_sum") >= 0.35
    assert metrics.registry.get_sample_value("asr_workers") == 0  # stopped
    assert metrics.registry.get_sample_value("asr_workers_busy") == 0


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    metrics = Metrics(CollectorRegistry())
    scheduler = await started(Scheduler(workers=1, queue_size=1, metrics=metrics))
    gate = threading.Event()
    try:
        # Unbatchable, so that one runs and one waits (batchable, they would share the worker's call).
        first = asyncio.create_task(submit(scheduler, lambda cancel: gate.wait(5), batched=False))
        second = asyncio.create_task(submit(scheduler, lambda cancel: gate.wait(5), batched=False))
        await until(lambda: scheduler.busy == 1 and scheduler.depth == 1, what="one job runs, one waits")
        assert not scheduler.has_room()
        assert metrics.registry.get_sample_value("asr_queue_depth") == 1
        assert metrics.registry.get_sample_value("asr_workers_busy") == 1
        started_at = time.monotonic()
        with pytest.raises(QueueFullError) as info:
            await submit(scheduler, lambda cancel: None)
        assert time.monotonic() - started_at < 0.1
        assert int(info.value.headers["Retry-After"]) >= 1
        gate.set()
        assert await first and await second
        assert scheduler.has_room()
    finally:
        await scheduler.stop()


async def test_a_timeout_answers_504_and_stops_the_job() -> None:
    scheduler = await started(Scheduler(workers=1, queue_size=2, metrics=Metrics(CollectorRegistry())))
    seen_cancel = threading.Event()

    def stubborn(cancel: threading.Event) -> None:
        if cancel.wait(5):
            seen_cancel.set()

    try:
        with pytest.raises(RequestTimeoutError):
            await submit(scheduler, stubborn, time_limit=0.2)
        assert seen_cancel.wait(2), "the running job was not told to stop"
        # The worker is free again for the next request.
        assert await submit(scheduler, lambda cancel: "next", time_limit=2) == "next"
    finally:
        await scheduler.stop()


async def test_a_job_timed_out_in_the_queue_never_runs() -> None:
    scheduler = await started(Scheduler(workers=1, queue_size=2, metrics=Metrics(CollectorRegistry())))
    gate = threading.Event()
    ran = threading.Event()
    try:
        blocker = asyncio.create_task(submit(scheduler, lambda cancel: gate.wait(5)))
        await until(lambda: scheduler.busy == 1, what="the blocker runs")
        with pytest.raises(RequestTimeoutError):
            await submit(scheduler, lambda cancel: ran.set(), time_limit=0.1)
        gate.set()
        await blocker
        await submit(scheduler, lambda cancel: None, 5)
        assert not ran.is_set()
    finally:
        await scheduler.stop()


async def test_a_cancelled_token_answers_with_its_reason_at_once() -> None:
    """A client that hangs up while queued: its work never runs and the caller hears 499 at once;
    the service draining: 503."""
    scheduler = await started(Scheduler(workers=1, queue_size=4, metrics=Metrics(CollectorRegistry())))
    gate = threading.Event()
    ran = threading.Event()
    try:
        blocker = asyncio.create_task(submit(scheduler, lambda cancel: gate.wait(5)))
        await until(lambda: scheduler.busy == 1, what="the blocker runs")
        for reason, error in ((CLIENT_DISCONNECTED, ClientGoneError), (SHUTTING_DOWN, ShuttingDownError)):
            token = CancelToken()
            waiting = asyncio.create_task(submit(scheduler, lambda cancel: ran.set(), token=token))
            await until(lambda: scheduler.depth == 1, what="the request queues")
            token.cancel(reason)
            with pytest.raises(error):
                await asyncio.wait_for(waiting, 1)
            assert scheduler.depth == 0
        gate.set()
        await blocker
        await submit(scheduler, lambda cancel: None)
        assert not ran.is_set()
    finally:
        await scheduler.stop()


async def test_job_errors_reach_the_caller() -> None:
    scheduler = await started(Scheduler(workers=1, queue_size=1, metrics=Metrics(CollectorRegistry())))

    def broken(cancel: threading.Event) -> None:
        raise ValueError("engine bug")

    try:
        with pytest.raises(ValueError, match="engine bug"):
            await submit(scheduler, broken, 5)
    finally:
        await scheduler.stop()


async def test_interactive_work_goes_first_and_jobs_leave_a_worker_free() -> None:
    """Two workers: job windows never take both, and a request that arrives behind queued job
    windows runs before them."""
    scheduler = await started(Scheduler(workers=2, queue_size=4, metrics=Metrics(CollectorRegistry())))
    order: list[str] = []
    running = {"batch": 0, "peak": 0}
    lock = threading.Lock()
    release = threading.Event()  # windows run until the request has had its chance
    calls: list[int] = []

    def window(name: str) -> Any:
        def job(cancel: threading.Event) -> None:
            with lock:
                running["batch"] += 1
                running["peak"] = max(running["peak"], running["batch"])
                order.append(name)
            release.wait(5)
            with lock:
                running["batch"] -= 1

        return job

    try:
        await submit(scheduler, lambda cancel: None)  # requests are arriving
        windows = [
            asyncio.create_task(submit(scheduler, window(f"w{i}"), None, Priority.BATCH, calls=calls)) for i in range(3)
        ]
        # The three enqueue together, so once w0 runs, w1 and w2 wait behind it.
        await until(lambda: "w0" in order, what="the first window runs")
        request = asyncio.create_task(submit(scheduler, lambda cancel: order.append("request")))
        await until(lambda: "request" in order, what="the request runs while w0 holds a worker")
        release.set()
        await asyncio.gather(*windows, request)
    finally:
        release.set()
        await scheduler.stop()
    assert running["peak"] == 1
    # The request started at once on the free worker, before the queued windows w1 and w2, although
    # they shared w0's call (one worker for job windows; batched, they ran in one call).
    assert order.index("request") < order.index("w1")
    assert calls == [3]


async def test_on_a_quiet_service_jobs_use_every_worker() -> None:
    scheduler = await started(Scheduler(workers=2, queue_size=4, metrics=Metrics(CollectorRegistry())))
    running: list[int] = []
    peak = [0]
    lock = threading.Lock()
    release = threading.Event()

    def window(cancel: threading.Event) -> None:
        with lock:
            running.append(1)
            peak[0] = max(peak[0], len(running))
        release.wait(5)
        with lock:
            running.pop()

    calls: list[int] = []
    try:
        windows = [asyncio.create_task(submit(scheduler, window, None, Priority.BATCH, calls=calls)) for _ in range(4)]
        # Windows hold their workers until both are seen busy: no luck with timing needed.
        await until(lambda: scheduler.busy == 2, what="job windows on both workers")
        release.set()
        await asyncio.gather(*windows)
    finally:
        release.set()
        await scheduler.stop()
    assert peak[0] == 2
    assert calls == [2, 2]  # two idle workers split the four: neither takes them all


async def test_jobs_get_their_share_of_turns_under_steady_requests() -> None:
    scheduler = await started(
        Scheduler(workers=1, queue_size=32, metrics=Metrics(CollectorRegistry()), batch_share=0.25)
    )
    order: list[str] = []
    gate = threading.Event()
    calls: list[int] = []
    try:
        blocker = asyncio.create_task(submit(scheduler, lambda cancel: gate.wait(5)))
        await until(lambda: scheduler.busy == 1, what="the blocker runs")
        tasks = [
            asyncio.create_task(
                submit(scheduler, lambda cancel, i=i: order.append(f"job{i}"), None, Priority.BATCH, calls=calls)
            )
            for i in range(2)
        ]
        tasks += [
            asyncio.create_task(submit(scheduler, lambda cancel, i=i: order.append(f"r{i}"), calls=calls))
            for i in range(12)
        ]
        # The tasks enqueue in the order they were made: all twelve requests waiting means both
        # job windows wait ahead of them.
        await until(lambda: scheduler.depth == 12, what="everything queues behind the blocker")
        gate.set()
        await asyncio.gather(blocker, *tasks)
    finally:
        await scheduler.stop()
    # With requests always waiting, a job window still gets one turn in four, counted in jobs: the
    # requests' calls (batched) stop where the windows' turn comes.
    assert order.index("job0") <= 4 and order.index("job1") <= 9, order
    assert max(calls) > 1 and sum(calls) == 14, calls


async def test_idle_work_runs_only_when_nothing_waits_and_gives_way() -> None:
    scheduler = await started(Scheduler(workers=1, queue_size=4, metrics=Metrics(CollectorRegistry())))
    stopped = threading.Event()

    def background(cancel: threading.Event) -> str:
        if cancel.wait(5):
            stopped.set()
        return "finished"

    try:
        idle = asyncio.create_task(submit(scheduler, background, None, Priority.IDLE))
        await until(lambda: scheduler.busy == 1, what="the idle work runs")
        started_at = time.monotonic()
        assert await submit(scheduler, lambda cancel: "request") == "request"
        assert time.monotonic() - started_at < 1.0
        with pytest.raises(Preempted):
            await idle
        assert stopped.wait(5), "the idle work was not told to stop"
    finally:
        await scheduler.stop()


async def _order_of_waiting(
    order: str, costs: list[float], waited_before: float = 0.0, batch_max_size: int = 8
) -> list[float]:
    """Hold the one worker, queue jobs of `costs` audio seconds in that order, free the worker;
    return the costs in the order the jobs ran (batched: in the order within their call).
    `waited_before` ages the first job that long."""
    scheduler = await started(
        Scheduler(
            workers=1,
            queue_size=8,
            metrics=Metrics(CollectorRegistry()),
            order=order,  # type: ignore[arg-type]
            batch_max_size=batch_max_size,
        )
    )
    hold, ran = threading.Event(), []

    def holder(cancel: threading.Event) -> None:
        hold.wait(10)

    def worker(cost: float) -> Any:
        return lambda cancel: ran.append(cost)

    try:
        first = asyncio.ensure_future(scheduler.run(holder, token=CancelToken(), batch=batchable(holder)))
        await until(lambda: scheduler.busy == 1, what="the worker is held")
        tasks = []
        for i, cost in enumerate(costs):
            fn = worker(cost)
            job = scheduler.run(fn, token=CancelToken(), cost=cost, batch=batchable(fn))
            tasks.append(asyncio.ensure_future(job))
            await until(lambda n=i + 1: scheduler.depth == n, what="the job waits")
            if i == 0 and waited_before:
                scheduler._waiting[Priority.INTERACTIVE][0].enqueued -= waited_before  # white-box: age it
        hold.set()
        await asyncio.gather(first, *tasks)
    finally:
        await scheduler.stop()
    return ran


@pytest.mark.parametrize("batch_max_size", [8, 1])
async def test_a_short_request_passes_long_ones_that_wait(batch_max_size: int) -> None:
    # Three long uploads wait for the worker, then a 0.65 s clip arrives: it goes first, then the
    # long ones by how long they waited (equal lengths: arrival order); in one call or one by one.
    fair = await _order_of_waiting("fair", [60.0, 61.0, 62.0, 0.65], batch_max_size=batch_max_size)
    assert fair == [0.65, 60.0, 61.0, 62.0]
    # First come, first served when asked for (ASR_INTERACTIVE_ORDER=arrival).
    arrival = await _order_of_waiting("arrival", [60.0, 61.0, 62.0, 0.65], batch_max_size=batch_max_size)
    assert arrival == [60.0, 61.0, 62.0, 0.65]


async def test_a_long_request_that_waited_long_is_not_starved_by_short_ones() -> None:
    # A 60 s upload (about 12 s of work at the starting estimate of 0.2 s per audio second) that
    # has waited 10 minutes has a response ratio of about 51; a fresh 2 s clip's is 1.
    assert await _order_of_waiting("fair", [60.0, 2.0], waited_before=600.0) == [60.0, 2.0]
