"""The scheduler's dynamic batcher on its own: which waiting jobs share an engine call.

Jobs here are test doubles of clip decodes: a batch's "engine call" (tests.test_scheduler.run_each)
runs each job's function in turn in one worker thread, which is what the scheduler sees of a
batched engine call (one worker, many items, one cancel event each). The real engine's batched
call is tested in tests/test_batching_real.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.cancellation import CLIENT_DISCONNECTED, CancelToken
from service.errors import ClientGoneError
from service.metrics import Metrics
from service.scheduler import Batchable, Preempted, Priority, Scheduler
from tests.conftest import until
from tests.test_scheduler import run_each

pytestmark = pytest.mark.anyio


async def scheduler_with(**kwargs: Any) -> Scheduler:
    scheduler = Scheduler(queue_size=32, metrics=Metrics(CollectorRegistry()), **{"workers": 1, **kwargs})
    await scheduler.start()
    return scheduler


class Calls:
    """Records every engine call: the names of the jobs it held, in order."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self._lock = threading.Lock()

    def run(self, items: list[Any], cancels: list[threading.Event]) -> list[Any]:
        with self._lock:
            self.calls.append([name for name, _ in items])
        return run_each([fn for _, fn in items], cancels)

    def job(self, name: str, fn: Any = None, key: object = "model-a") -> tuple[Any, Batchable[Any, Any]]:
        body = fn or (lambda cancel: name)
        return body, Batchable(key, (name, body), self.run)


async def hold_worker(scheduler: Scheduler) -> tuple[threading.Event, asyncio.Future[Any]]:
    """Occupy the one worker with an unbatchable job until the returned event is set."""
    gate = threading.Event()
    blocker = asyncio.ensure_future(scheduler.run(lambda cancel: gate.wait(10), token=CancelToken()))
    await until(lambda: scheduler.busy == 1, what="the worker is held")
    return gate, blocker


async def queue(
    scheduler: Scheduler, calls: Calls, names: list[str], priority: Priority = Priority.INTERACTIVE, **kw: Any
) -> list[asyncio.Future[Any]]:
    futures = []
    for name in names:
        fn, batch = calls.job(name, **kw)
        futures.append(asyncio.ensure_future(scheduler.run(fn, token=CancelToken(), priority=priority, batch=batch)))
    await until(lambda: sum(len(q) for q in scheduler._waiting.values()) >= len(names), what="the jobs wait")
    return futures


async def test_jobs_waiting_together_share_one_call_and_each_gets_its_own_result() -> None:
    scheduler = await scheduler_with()
    calls = Calls()
    try:
        gate, blocker = await hold_worker(scheduler)
        futures = await queue(scheduler, calls, ["a", "b", "c"])
        gate.set()
        assert await asyncio.gather(*futures) == ["a", "b", "c"]
        await blocker
    finally:
        await scheduler.stop()
    assert calls.calls == [["a", "b", "c"]]


async def test_a_call_holds_at_most_the_maximum_batch_size() -> None:
    scheduler = await scheduler_with(batch_max_size=4)
    calls = Calls()
    names = [f"j{i}" for i in range(10)]
    try:
        gate, blocker = await hold_worker(scheduler)
        futures = await queue(scheduler, calls, names)
        gate.set()
        assert await asyncio.gather(*futures) == names
        await blocker
    finally:
        await scheduler.stop()
    assert [len(c) for c in calls.calls] == [4, 4, 2]


async def test_a_batch_size_of_one_turns_batching_off() -> None:
    scheduler = await scheduler_with(batch_max_size=1)
    calls = Calls()
    try:
        gate, blocker = await hold_worker(scheduler)
        futures = await queue(scheduler, calls, ["a", "b", "c"])
        gate.set()
        assert await asyncio.gather(*futures) == ["a", "b", "c"]
        await blocker
    finally:
        await scheduler.stop()
    assert calls.calls == []  # each ran its own function: no batched call at all


async def test_items_of_different_models_never_share_a_call() -> None:
    scheduler = await scheduler_with()
    calls = Calls()
    try:
        gate, blocker = await hold_worker(scheduler)
        futures = await queue(scheduler, calls, ["a1", "a2"], key="model-a")
        futures += await queue(scheduler, calls, ["b1", "b2", "b3"], key="model-b")
        gate.set()
        assert await asyncio.gather(*futures) == ["a1", "a2", "b1", "b2", "b3"]
        await blocker
    finally:
        await scheduler.stop()
    assert sorted(calls.calls) == [["a1", "a2"], ["b1", "b2", "b3"]]


async def test_batches_form_within_a_priority_and_the_interactive_one_goes_first() -> None:
    """Stream partials and requests of the same model wait together: requests run first, in a call
    of their own; the partials follow in theirs."""
    scheduler = await scheduler_with(workers=2)
    calls = Calls()
    try:
        gate, blocker = await hold_worker(scheduler)
        gate2, blocker2 = await hold_worker_second(scheduler)
        futures = await queue(scheduler, calls, ["p1", "p2"], Priority.STREAM)
        futures += await queue(scheduler, calls, ["r1", "r2", "r3"])
        gate.set()  # one worker comes free: the requests take it
        await until(lambda: len(calls.calls) >= 1, what="a call runs")
        gate2.set()
        await asyncio.gather(*futures, blocker, blocker2)
    finally:
        await scheduler.stop()
    assert calls.calls == [["r1", "r2", "r3"], ["p1", "p2"]]


async def hold_worker_second(scheduler: Scheduler) -> tuple[threading.Event, asyncio.Future[Any]]:
    gate = threading.Event()
    blocker = asyncio.ensure_future(scheduler.run(lambda cancel: gate.wait(10), token=CancelToken()))
    await until(lambda: scheduler.busy == 2, what="both workers are held")
    return gate, blocker


async def test_an_interactive_request_never_waits_behind_a_batch_of_idle_work() -> None:
    """Idle work (shadow scoring) is never gathered into a batch: a request that arrives while it
    runs preempts the one clip running and goes at once; the rest of the idle work waits."""
    scheduler = await scheduler_with()
    calls = Calls()
    stopped: list[str] = []

    def background(name: str) -> Any:
        def fn(cancel: threading.Event) -> str:
            if cancel.wait(10):
                stopped.append(name)
            return name

        return fn

    try:
        gate, blocker = await hold_worker(scheduler)
        idle = []
        for name in ("s1", "s2", "s3"):
            fn, batch = calls.job(name, background(name))
            idle.append(
                asyncio.ensure_future(scheduler.run(fn, token=CancelToken(), priority=Priority.IDLE, batch=batch))
            )
        await until(lambda: len(scheduler._waiting[Priority.IDLE]) == 3, what="the idle work waits")
        gate.set()
        await blocker
        await until(lambda: len(scheduler._waiting[Priority.IDLE]) == 2, what="one idle clip runs, alone")
        started = time.monotonic()
        fn, batch = calls.job("request")
        assert await scheduler.run(fn, token=CancelToken(), batch=batch) == "request"
        assert time.monotonic() - started < 5
        with pytest.raises(Preempted):
            await idle[0]
    finally:
        await scheduler.stop()
    assert stopped == ["s1"]
    assert calls.calls == []  # no call held more than one clip


async def test_a_cancelled_item_leaves_its_batch_and_its_result_is_dropped() -> None:
    """One client of a batch hangs up: it hears 499 at once; the others still get their results,
    and a job cancelled while queued is skipped by the call it was gathered into."""
    scheduler = await scheduler_with()
    calls = Calls()
    ran: list[str] = []
    first_runs, release = threading.Event(), threading.Event()

    def slow(name: str) -> Any:
        def fn(cancel: threading.Event) -> str:
            ran.append(name)
            first_runs.set()
            release.wait(10)
            return name

        return fn

    def quick(name: str) -> Any:
        def fn(cancel: threading.Event) -> str:
            ran.append(name)
            return name

        return fn

    try:
        gate, blocker = await hold_worker(scheduler)
        tokens = {name: CancelToken() for name in ("a", "b", "c")}
        bodies = {"a": slow("a"), "b": quick("b"), "c": quick("c")}
        futures = {}
        for name in ("a", "b", "c"):
            fn, batch = calls.job(name, bodies[name])
            futures[name] = asyncio.ensure_future(scheduler.run(fn, token=tokens[name], batch=batch))
        await until(lambda: scheduler.depth == 3, what="the three wait")
        gate.set()
        await blocker
        await asyncio.to_thread(first_runs.wait, 5)  # the call has begun with "a"
        tokens["b"].cancel(CLIENT_DISCONNECTED)
        with pytest.raises(ClientGoneError):
            await asyncio.wait_for(futures["b"], 2)  # answered at once, while "a" still runs
        release.set()
        assert await futures["a"] == "a"
        assert await futures["c"] == "c"
    finally:
        release.set()
        await scheduler.stop()
    assert calls.calls == [["a", "b", "c"]]
    assert ran == ["a", "c"]  # "b" left the batch before its turn in the call


async def test_one_items_error_is_its_own_and_a_failed_call_fails_every_item() -> None:
    scheduler = await scheduler_with()
    calls = Calls()

    def broken(cancel: threading.Event) -> None:
        raise ValueError("bad clip")

    def failing_call(items: list[Any], cancels: list[threading.Event]) -> list[Any]:
        raise RuntimeError("engine down")

    try:
        gate, blocker = await hold_worker(scheduler)
        ok = await queue(scheduler, calls, ["a"])
        fn, batch = calls.job("bad", broken)
        bad = asyncio.ensure_future(scheduler.run(fn, token=CancelToken(), batch=batch))
        await until(lambda: scheduler.depth == 2, what="both wait")
        gate.set()
        await blocker
        assert await ok[0] == "a"
        with pytest.raises(ValueError, match="bad clip"):
            await bad
        gate, blocker = await hold_worker(scheduler)
        down = [
            asyncio.ensure_future(
                scheduler.run(lambda c: None, token=CancelToken(), batch=Batchable("m", None, failing_call))
            )
            for _ in range(2)
        ]
        await until(lambda: scheduler.depth == 2, what="both wait")
        gate.set()
        await blocker
        for future in down:
            with pytest.raises(RuntimeError, match="engine down"):
                await future
    finally:
        await scheduler.stop()


async def test_a_burst_is_split_among_free_workers() -> None:
    scheduler = await scheduler_with(workers=2)
    calls = Calls()
    try:
        futures = []
        for i in range(6):
            fn, batch = calls.job(f"j{i}")
            futures.append(scheduler.run(fn, token=CancelToken(), batch=batch))
        await asyncio.gather(*futures)
    finally:
        await scheduler.stop()
    assert sorted(len(c) for c in calls.calls) == [3, 3]


async def test_a_worker_waits_briefly_for_admitted_requests_only_when_others_are_busy() -> None:
    """Three requests are admitted while both workers are busy; one reaches the queue at once, two
    a moment later (still being decoded): the freed worker waits for them and runs all three in
    one call. A lone request never waits for company."""
    scheduler = await scheduler_with(workers=2, batch_wait=2.0)
    calls = Calls()
    try:
        started = time.monotonic()
        with scheduler.admit():
            fn, batch = calls.job("alone")
            assert await scheduler.run(fn, token=CancelToken(), batch=batch) == "alone"
        assert time.monotonic() - started < 1.0, "a lone request waited for a batch"
        gate, blocker = await hold_worker(scheduler)
        gate2, blocker2 = await hold_worker_second(scheduler)
        tickets = [scheduler.admit() for _ in range(3)]
        first = await queue(scheduler, calls, ["r1"])
        gate.set()
        await blocker
        await until(lambda: scheduler.busy == 2 and scheduler.depth == 0, what="a worker takes r1 and waits")
        later = await queue_now(scheduler, calls, ["r2", "r3"])
        assert await asyncio.gather(*first, *later) == ["r1", "r2", "r3"]
        for ticket in tickets:
            ticket.release()
        gate2.set()
        await blocker2
    finally:
        await scheduler.stop()
    assert calls.calls == [["r1", "r2", "r3"]]  # "alone" ran its own function


async def queue_now(scheduler: Scheduler, calls: Calls, names: list[str]) -> list[asyncio.Future[Any]]:
    futures = []
    for name in names:
        fn, batch = calls.job(name)
        futures.append(asyncio.ensure_future(scheduler.run(fn, token=CancelToken(), batch=batch)))
    return futures
