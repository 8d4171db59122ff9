from __future__ import annotations

import asyncio
import threading
import time

import pytest
from prometheus_client import CollectorRegistry

from service.errors import QueueFullError, RequestTimeoutError
from service.metrics import Metrics
from service.scheduler import Scheduler

pytestmark = pytest.mark.anyio


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


async def test_runs_at_most_workers_at_once_and_queues_the_rest() -> None:
    metrics = Metrics(CollectorRegistry())
    scheduler = Scheduler(workers=2, queue_size=4, metrics=metrics)
    await scheduler.start()
    running: list[int] = []
    peak = [0]
    try:
        results = await asyncio.gather(*(scheduler.submit(_sleeper(0.1, running, peak), 10) for _ in range(6)))
    finally:
        await scheduler.stop()
    assert results == [0.1] * 6
    assert peak[0] == 2
    waits = metrics.registry.get_sample_value("asr_queue_wait_seconds_count")
    assert waits == 6
    # Four jobs waited behind the first two: their summed wait is at least 0.1 s each.
    assert metrics.registry.get_sample_value("asr_queue_wait_seconds_sum") >= 0.35


async def test_a_full_queue_refuses_at_once_with_retry_after() -> None:
    metrics = Metrics(CollectorRegistry())
    scheduler = Scheduler(workers=1, queue_size=1, metrics=metrics)
    await scheduler.start()
    gate = threading.Event()
    try:
        first = asyncio.create_task(scheduler.submit(lambda cancel: gate.wait(5), 10))
        second = asyncio.create_task(scheduler.submit(lambda cancel: gate.wait(5), 10))
        await asyncio.sleep(0.05)
        assert not scheduler.has_room()
        assert metrics.registry.get_sample_value("asr_queue_depth") == 1
        started = time.monotonic()
        with pytest.raises(QueueFullError) as info:
            await scheduler.submit(lambda cancel: None, 10)
        assert time.monotonic() - started < 0.1
        assert int(info.value.headers["Retry-After"]) >= 1
        gate.set()
        assert await first and await second
    finally:
        await scheduler.stop()


async def test_a_timeout_answers_504_and_stops_the_job() -> None:
    metrics = Metrics(CollectorRegistry())
    scheduler = Scheduler(workers=1, queue_size=2, metrics=metrics)
    await scheduler.start()
    seen_cancel = threading.Event()

    def stubborn(cancel: threading.Event) -> None:
        if cancel.wait(5):
            seen_cancel.set()

    try:
        with pytest.raises(RequestTimeoutError):
            await scheduler.submit(stubborn, time_limit=0.2)
        assert seen_cancel.wait(2), "the running job was not told to stop"
        # The worker is free again for the next request.
        assert await scheduler.submit(lambda cancel: "next", time_limit=2) == "next"
    finally:
        await scheduler.stop()


async def test_a_job_timed_out_in_the_queue_never_runs() -> None:
    metrics = Metrics(CollectorRegistry())
    scheduler = Scheduler(workers=1, queue_size=2, metrics=metrics)
    await scheduler.start()
    gate = threading.Event()
    ran = threading.Event()
    try:
        blocker = asyncio.create_task(scheduler.submit(lambda cancel: gate.wait(5), 10))
        await asyncio.sleep(0.02)
        with pytest.raises(RequestTimeoutError):
            await scheduler.submit(lambda cancel: ran.set(), time_limit=0.1)
        gate.set()
        await blocker
        await scheduler.submit(lambda cancel: None, 5)
        assert not ran.is_set()
    finally:
        await scheduler.stop()


async def test_job_errors_reach_the_caller() -> None:
    scheduler = Scheduler(workers=1, queue_size=1, metrics=Metrics(CollectorRegistry()))
    await scheduler.start()

    def broken(cancel: threading.Event) -> None:
        raise ValueError("engine bug")

    try:
        with pytest.raises(ValueError, match="engine bug"):
            await scheduler.submit(broken, 5)
    finally:
        await scheduler.stop()
