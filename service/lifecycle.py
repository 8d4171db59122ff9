"""Draining for shutdown: stop taking work, let what runs finish, then stop what is left.

On SIGTERM (or SIGINT) a served process first drains:
1. /readyz answers 503 at once, so a load balancer stops sending traffic; new work is refused
   with 503 `shutting_down` (and Retry-After), never accepted and then dropped;
2. requests, streams and job windows already admitted get ASR_SHUTDOWN_GRACE_SECONDS to finish;
3. whatever is still running then is cancelled: each waiting client gets a 503 JSON answer,
   engines stop at their next segment, jobs keep their finished windows and resume after restart;
4. only then does uvicorn stop listening and shut down.
A second signal during the drain skips the rest of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from typing import TYPE_CHECKING, Any

from service.cancellation import SHUTTING_DOWN
from service.errors import ShuttingDownError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from types import FrameType

    from service.cancellation import CancelToken

log = logging.getLogger(__name__)
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Lifecycle:
    def __init__(self, grace_seconds: float) -> None:
        self.grace_seconds = grace_seconds
        self.draining = False
        self._in_flight: set[CancelToken] = set()
        self._on_drain: list[Callable[[], None]] = []
        self._previous: dict[int, Any] = {}
        self._drain_task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()  # set whenever nothing is in flight
        self._idle.set()

    # ---- work --------------------------------------------------------------------------

    def check_accepting(self) -> None:
        """Raise ShuttingDownError (503) once draining has begun."""
        if self.draining:
            raise ShuttingDownError()

    @contextlib.contextmanager
    def track(self, token: CancelToken) -> Iterator[None]:
        """Count the work behind `token` as in flight, so that draining waits for it, then stops it."""
        self._in_flight.add(token)
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight.discard(token)
            if not self._in_flight:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call `callback` when draining begins (jobs stop taking windows, streams close)."""
        self._on_drain.append(callback)

    async def drain(self) -> None:
        """Refuse new work, wait up to the grace period for work in flight, then cancel the rest."""
        self.draining = True
        callbacks, self._on_drain = self._on_drain, []
        for callback in callbacks:
            callback()
        log.info("draining: %d in flight, grace %.0f s", self.in_flight, self.grace_seconds)
        if await self._until_idle(self.grace_seconds):
            return
        left = list(self._in_flight)
        for token in left:
            token.cancel(SHUTTING_DOWN)
        log.warning("drain: grace period over, stopped %d unfinished requests", len(left))
        # Give the cancelled requests a moment to send their 503s before the server closes.
        await self._until_idle(2.0)

    async def _until_idle(self, seconds: float) -> bool:
        """Wait up to `seconds` for nothing to be in flight; returns whether that happened."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    # ---- signals -----------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """Drain on SIGTERM/SIGINT before the server's own handler (uvicorn's) runs.

        Only from the main thread, where signal handlers live; a no-op elsewhere (tests).
        """
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in _SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, lambda s, f: self._on_signal(loop, s, f))

    def restore_signal_handlers(self) -> None:
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(sig, handler)
        self._previous = {}

    def _on_signal(self, loop: asyncio.AbstractEventLoop, sig: int, frame: FrameType | None) -> None:
        if self._drain_task is not None:  # a second signal: stop waiting
            self._pass_on(sig, frame)
            return
        log.info("signal %s: draining before shutdown", signal.Signals(sig).name)
        self.draining = True  # readiness turns 503 before anything else happens

        def start() -> None:
            self._drain_task = loop.create_task(self._drain_then_exit(sig, frame))

        loop.call_soon_threadsafe(start)

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        try:
            await self.drain()
        finally:
            self._pass_on(sig, frame)

    def _pass_on(self, sig: int, frame: FrameType | None) -> None:
        previous = self._previous.get(sig)
        if callable(previous):
            previous(sig, frame)
        else:
            # No server handler to hand over to: behave as the default would.
            raise SystemExit(128 + sig)
