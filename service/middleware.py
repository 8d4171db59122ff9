"""Pure ASGI middleware: request ids, HTTP metrics by route template, one log line per request.

Pure ASGI (not BaseHTTPMiddleware) so that it adds no task or stream copy per request. The
route label is the matched route's template, read from the scope after routing; paths that
match no route share one label value, and so do methods outside the standard set, so random
URLs and made-up methods add no series. A client that hangs up before its answer is recorded
as 499 (nginx's "client closed request"), whatever the app then tried to send.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from typing import TYPE_CHECKING, Any

from service.keys import ANONYMOUS
from service.metrics import UNMATCHED_ROUTE

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from service.metrics import Metrics

log = logging.getLogger("service.access")

# Probes and scrapes are not traffic: they would drown the request rate and latency.
UNCOUNTED_ROUTES = frozenset({"/metrics", "/healthz", "/readyz"})
# Methods that label metrics as themselves; any other becomes "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
# A caller's X-Request-ID is used only when short and plain: it goes into logs, and into an
# OpenMetrics exemplar, whose labels may hold 128 characters in all ("request_id" takes 10).
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
CLIENT_CLOSED_REQUEST = 499
# Request ids need to be unique, not secret: one urandom seed per process instead of a
# getrandom syscall per request (uuid4), which costs ~50 µs on some VMs.
_IDS = random.Random(os.urandom(32))


def new_request_id() -> str:
    return f"{_IDS.getrandbits(128):032x}"


def request_state(scope: Scope) -> dict[str, Any]:
    """The per-request dict that handlers fill (audio seconds, ...) and this middleware logs."""
    state: dict[str, Any] = scope.setdefault("state", {})
    return state


class ObserverMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        state = request_state(scope)
        request_id = _incoming_request_id(scope) or new_request_id()
        state["request_id"] = request_id
        header = (b"x-request-id", request_id.encode())
        counted = scope["path"] not in UNCOUNTED_ROUTES
        status = 500
        started = finished = False

        def finish() -> None:
            nonlocal finished
            finished = True
            if counted:
                self.metrics.http_in_flight.dec()
                gone = state.get("client_gone") and not started
                self._record(scope, state, CLIENT_CLOSED_REQUEST if gone else status, time.perf_counter() - start)

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect" and not started:
                state["client_gone"] = True
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status = message["status"]
                started = not state.get("client_gone")
                message["headers"] = [*message.get("headers", []), header]
            await send(message)
            # The clock stops at the last body byte: background tasks (the quality sampler)
            # run after it inside the same call and are not the client's latency.
            if message["type"] == "http.response.body" and not message.get("more_body") and not finished:
                finish()

        if counted:
            self.metrics.http_in_flight.inc()
        try:
            await self.app(scope, receive_wrapper, send_wrapper)
        finally:
            if not finished:
                finish()

    def _record(self, scope: Scope, state: dict[str, Any], status: int, elapsed: float) -> None:
        route = _route_template(scope)
        # Any method string can be sent: keep that label bounded too.
        method = scope["method"] if route != UNMATCHED_ROUTE and scope["method"] in KNOWN_METHODS else "other"
        self.metrics.http_requests.labels(method, route, str(status)).inc()
        self.metrics.http_duration.labels(method, route).observe(elapsed, exemplar={"request_id": state["request_id"]})
        # The key's name is set by auth from the configured set (service.api.deps), never from input.
        self.metrics.key_requests.labels(state.get("key", ANONYMOUS), f"{status // 100}xx").inc()
        _log_request(scope, state, route, status, elapsed)


def _incoming_request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            # Echo a caller's id only when it is short and plain: it goes into logs.
            return text if _CLIENT_ID.match(text) else None
    return None


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


def _log_request(scope: Scope, state: dict[str, Any], route: str, status: int, elapsed: float) -> None:
    fields = {
        "request_id": state["request_id"],
        "method": scope["method"],
        "route": route,
        "status": status,
        "seconds": round(elapsed, 4),
    }
    for key in ("key", "audio_seconds", "processing_seconds", "rtf", "language", "error"):
        if key in state:
            fields[key] = state[key]
    log.info(
        "%s %s %s %.3fs%s",
        scope["method"],
        route,
        status,
        elapsed,
        "".join(f" {k}={v}" for k, v in fields.items() if k not in ("method", "route", "status", "seconds")),
        extra={"fields": fields},
    )
