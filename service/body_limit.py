"""Request body limits, enforced as the body arrives, answered in the service's JSON error shape.

Pure ASGI: the limit is checked against Content-Length at the first read (so a declared 10 GB
body is refused without reading a byte of it) and against the bytes counted as chunks arrive
(chunked uploads without a length). Passing it raises HTTPException(413) from `receive`, which
the app's handler renders as JSON and counts (reason "too_large"); FastAPI re-raises an
HTTPException from body reading unchanged, so JSON-body routes answer the same way.

The limit is per path (uploads get ASR_MAX_UPLOAD_BYTES and room for the form, the rest 1 MB)
and lives in the request state as `body_limit`: a route may lift it before reading the body
(raw PCM of a long film, bounded by duration instead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException

from service.middleware import request_state

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int | None]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = request_state(scope)
        state.setdefault("body_limit", self.limit_for(scope["path"]))
        declared = _content_length(scope)
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            limit: int | None = state["body_limit"]
            if limit is not None and declared is not None and declared > limit:
                raise HTTPException(413, f"the request body ({declared} bytes) is larger than the limit of {limit}")
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if limit is not None and received > limit:
                    raise HTTPException(413, f"the request body is larger than the limit of {limit} bytes")
            return message

        await self.app(scope, limited_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
