"""What a connection may cost before it asks for anything: a cap, a deadline for its request head,
and accept errors logged at a bounded rate.

uvicorn keeps a connection that sends nothing (or half a request head) open for ever, and an idle
WebSocket upgrade likewise. With enough of them the process runs out of file descriptors; then
Python's accept loop (asyncio selector_events `_accept_connection`) logs "socket.accept() out of
system resource" and re-arms itself once per backlog slot, so a few hundred idle sockets produced
680k log lines (302 MB) in 40 s while /healthz timed out. So:
- a connection must finish its request head within ASR_HEADER_TIMEOUT_SECONDS of opening (or of
  the first byte of its next request on a kept-alive connection), else it is closed;
- at most ASR_MAX_CONNECTIONS are open at once (never more than the process's file-descriptor limit
  leaves room for): one more evicts the oldest connection still waiting for its request head (the
  likeliest to be idle or hostile), so a real client (or a health probe) still gets in; when every
  connection is busy with a request or a stream, the new one is answered 503 and closed;
- accept errors are logged once per ASR_LOG_INTERVAL seconds with how many there were.
Each refusal is counted in asr_connections_closed_total{reason}.

The guard is the app's (app.state.connections); the protocol below finds it through the app that
uvicorn hands every connection, so it works the same in each worker process.
"""

from __future__ import annotations

import logging
import resource
import time
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:
    import asyncio

    from service.config import ServerSettings
    from service.metrics import Metrics

log = logging.getLogger(__name__)
# Descriptors kept for everything that is not a client connection: model files, the stores'
# databases, spilled audio, the listening socket, pipes.
FD_RESERVE = 64
ACCEPT_LOG_INTERVAL = 10.0
_BUSY_BODY = (
    b'{"error":{"code":"too_many_connections","message":"the service has too many open connections; retry",'
    b'"type":"server_error","param":null}}'
)
_BUSY_REPLY = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


def raise_fd_limit() -> int:
    """Raise this process's soft file-descriptor limit to its hard one; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _room() -> int | None:
    """Descriptors this process may give to connections (None: no limit)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else max(32, soft - FD_RESERVE)


def listen_backlog(settings: ServerSettings) -> int:
    """The listening socket's backlog. asyncio accepts up to `backlog` connections in one go before
    any of them is looked at (so before the cap can close one): a burst must fit in the descriptors
    that the cap leaves free, else accept() fails with EMFILE."""
    room = _room()
    return 2048 if room is None else max(8, min(2048, room // 4))


def connection_cap(settings: ServerSettings) -> int:
    """ASR_MAX_CONNECTIONS, or less when the file-descriptor limit leaves room for fewer (the room
    less one accept burst, see listen_backlog)."""
    room = _room()
    if room is None:
        return settings.max_connections
    return max(1, min(settings.max_connections, room - listen_backlog(settings)))


class ConnectionGuard:
    """The limits one server process applies to its connections, and their counters."""

    def __init__(self, settings: ServerSettings, metrics: Metrics) -> None:
        self.max_connections = connection_cap(settings)
        self.header_timeout = settings.header_timeout_seconds
        self._metrics = metrics
        self._accept_errors = 0
        self._accept_logged = 0.0
        # Connections waiting for their request head, oldest first (dicts keep insertion order).
        self.waiting: dict[GuardedHttpProtocol, None] = {}

    def refuse(self, reason: str) -> None:
        self._metrics.connections_closed.labels(reason).inc()

    def make_room(self, newcomer: GuardedHttpProtocol) -> bool:
        """At the cap: close the oldest connection still waiting for its head; False when none is."""
        for oldest in self.waiting:
            if oldest is not newcomer:
                self.refuse("evicted_idle")
                oldest.close_waiting()
                return True
        return False

    def on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """The event loop's exception handler: accept errors counted and logged at a bounded rate,
        everything else as asyncio would."""
        if context.get("message") != "socket.accept() out of system resource":
            loop.default_exception_handler(context)
            return
        self._accept_errors += 1
        self._metrics.accept_errors.inc()
        now = time.monotonic()
        if now - self._accept_logged >= ACCEPT_LOG_INTERVAL:
            self._accept_logged = now
            log.error(
                "cannot accept connections: %s (%d times since the last report; ASR_MAX_CONNECTIONS is %d)",
                context.get("exception"),
                self._accept_errors,
                self.max_connections,
            )
            self._accept_errors = 0

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        """Handle the loop's accept errors (call from the loop's thread, once the server runs)."""
        loop.set_exception_handler(self.on_loop_exception)


def _find_guard(app: Any) -> ConnectionGuard | None:
    """The guard of the service's app inside the middleware uvicorn wraps it in."""
    for _ in range(10):
        state = getattr(app, "state", None)
        guard = getattr(state, "connections", None)
        if isinstance(guard, ConnectionGuard):
            return guard
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guard's cap and request-head deadline (`serve` uses it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard = _find_guard(self.app)
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard = self._guard
        if guard is None:
            return
        if len(self.connections) > guard.max_connections and not guard.make_room(self):
            guard.refuse("connection_limit")
            transport.write(_BUSY_REPLY)
            transport.close()
            return
        self._arm(guard)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._guard is not None:
            self._arm(self._guard)  # a kept-alive connection's next request has the same deadline

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def close_waiting(self) -> None:
        """Close this connection, which has not finished a request head (evicted, or too slow)."""
        self._disarm()
        if not self.transport.is_closing():
            self.transport.close()

    def _arm(self, guard: ConnectionGuard) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(guard.header_timeout, self._head_too_slow)
        guard.waiting[self] = None

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._guard is not None:
            self._guard.waiting.pop(self, None)

    def _head_too_slow(self) -> None:
        if self._guard is not None:
            self._guard.refuse("header_timeout")
        self.close_waiting()
