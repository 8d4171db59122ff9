"""The Realtime WebSocket for live transcription: `/v1/realtime?intent=transcription`.

The official client works unchanged: `client.realtime.connect(extra_query={"intent":
"transcription"})`. The protocol is service.streaming.session's, the connection's limits (idle
timeout, longest session, draining, slow consumers, rates) service.streaming.connection's; this
route adds what comes before a session: auth (the same bearer ASR_API_KEY, a dependency as on
every route; its refusal is an `error` event and close 1008, sent by the app's error handler), and
the stream limit (ASR_MAX_STREAMS: one more gets an `error` event and close code 1013, "try again
later"). Refusals are an `error` event followed by a close, so the client learns why.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from service.api.deps import ApiKeyDep, MetricsDep, PipelineDep, SettingsDep, StreamsDep
from service.errors import ServiceError
from service.streaming.connection import POLICY_VIOLATION, SERVICE_RESTART, Connection, Outbox
from service.streaming.hub import StreamLimitError
from service.streaming.session import RealtimeSession

router = APIRouter()
TRY_AGAIN_LATER = 1013


def close_code_for(status: int) -> int:
    """The close code of a refusal with HTTP `status`: retry later for 503/429, else policy."""
    return TRY_AGAIN_LATER if status in (429, 503) else POLICY_VIOLATION


def error_event(code: str, message: str, kind: str = "invalid_request_error") -> dict[str, Any]:
    """A Realtime `error` event that is not an answer to a client event (refusals, limits)."""
    error = {"type": kind, "code": code, "message": message, "param": None, "event_id": None}
    return {"event_id": f"event_{uuid.uuid4().hex[:24]}", "type": "error", "error": error}


async def refuse(websocket: WebSocket, code: str, message: str, close_code: int) -> None:
    """Tell the client why in an `error` event, then close: accepted first if need be, since a
    refused handshake tells a client nothing it can show."""
    if websocket.client_state == WebSocketState.CONNECTING:
        await websocket.accept()
    kind = "server_error" if close_code in (TRY_AGAIN_LATER, SERVICE_RESTART) else "invalid_request_error"
    await websocket.send_text(json.dumps(error_event(code, message, kind), ensure_ascii=False))
    await websocket.close(close_code, message[:120])


@router.websocket("/v1/realtime")
async def realtime(
    websocket: WebSocket,
    caller: ApiKeyDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    hub: StreamsDep,
    metrics: MetricsDep,
) -> None:
    if websocket.query_params.get("intent") != "transcription":
        only = "only transcription sessions are served: connect with ?intent=transcription"
        metrics.rejected.labels("bad_request").inc()
        await refuse(websocket, "unsupported_session", only, POLICY_VIOLATION)
        return
    try:
        pipeline.admit(room=False)
    except ServiceError as exc:
        metrics.rejected.labels(exc.reason).inc()
        await refuse(
            websocket, exc.code, exc.message, SERVICE_RESTART if exc.code == "shutting_down" else TRY_AGAIN_LATER
        )
        return
    await websocket.accept()
    outbox = Outbox(websocket, settings.streams.stream_send_timeout_seconds)
    session = RealtimeSession(pipeline, settings.streams, outbox.send, metrics)
    try:
        with hub.open(session):
            connection = Connection(
                websocket,
                session,
                outbox,
                settings.streams,
                metrics,
                hub.draining,
                settings.server.shutdown_grace_seconds,
            )
            await connection.run()
    except StreamLimitError:
        await session.close()
        metrics.rejected.labels("stream_limit").inc()
        limit = f"all {hub.max_streams} live streams are taken; retry later"
        await refuse(websocket, "too_many_streams", limit, TRY_AGAIN_LATER)
