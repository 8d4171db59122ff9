"""Why a piece of work should stop, shared by the event loop and the thread that does the work.

One token per request (or job, or stream decode). Whoever decides the work is no longer wanted
cancels the token with a reason: the request's deadline ("timeout"), the client hanging up
("client_disconnected"), the service draining ("shutting_down"), more urgent work taking the
worker ("preempted"), or a job's owner cancelling it ("job_cancelled"). The worker thread polls
`event` between segments and windows; the coroutine waiting for the result wakes at once
through `wait()`.
"""

from __future__ import annotations

import asyncio
import threading

# The reasons, each answered with its own error (service.errors.error_for_cancellation).
TIMEOUT = "timeout"
CLIENT_DISCONNECTED = "client_disconnected"
SHUTTING_DOWN = "shutting_down"
PREEMPTED = "preempted"
JOB_CANCELLED = "job_cancelled"


class CancelToken:
    """A thread-safe, one-shot cancellation with a reason; the first reason given wins."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: str | None = None
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def cancelled(self) -> bool:
        return self.event.is_set()

    def cancel(self, reason: str) -> None:
        """Cancel with `reason` (from any thread); later calls change nothing."""
        with self._lock:
            if self.event.is_set():
                return
            self.reason = reason
            self.event.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    async def wait(self) -> str:
        """Return the reason once the token is cancelled."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if not self.event.is_set():
                self._waiters.append((loop, future))
            else:
                future.set_result(None)
        try:
            await future
        finally:
            with self._lock:
                self._waiters = [(lp, f) for lp, f in self._waiters if f is not future]
        assert self.reason is not None
        return self.reason


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
