"""The Realtime WebSocket for live transcription: `/v1/realtime?intent=transcription`.

The official client works unchanged: `client.realtime.connect(extra_query={"intent":
"transcription"})`. The protocol is service.streaming.session's, the connection's limits (idle
timeout, longest session, draining, slow consumers, rates) service.streaming.connection's; this
route adds what comes before a session and what belongs to its key: auth (the same keys, a
dependency as on every route, as a bearer token or as the subprotocol browsers send,
`openai-insecure-api-key.<key or client secret>`; a client secret from POST
/v1/realtime/client_secrets opens one session and makes `?intent` optional; a refusal is an
`error` event and close 1008, sent by the app's error handler), the key's limits (a stream holds
one of its places in flight; each finished turn's audio is charged to it, and a stream whose key
has spent its hour's audio ends with an `error` event `key_audio_limit` and close 1013), and the
stream limit (ASR_MAX_STREAMS: one more gets an `error` event and close code 1013, "try again
later"). Refusals are an `error` event followed by a close, so the client learns why.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketState

from service.api.deps import KEY_SUBPROTOCOL, KeyUsageDep, MetricsDep, PipelineDep, SettingsDep, StreamsDep, WorkKeyDep
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


def subprotocol(websocket: WebSocket) -> str | None:
    """The subprotocol to accept: a browser fails a handshake that offered subprotocols and got none
    back, so answer "realtime" (what OpenAI's clients offer beside the key), else the first offered
    that carries no key; a key is never echoed."""
    offered = [str(p) for p in websocket.scope.get("subprotocols") or ()]
    if "realtime" in offered:
        return "realtime"
    return next((p for p in offered if not p.startswith(KEY_SUBPROTOCOL)), None)


def turn_seconds(event: dict[str, Any]) -> float:
    """The audio seconds a server event reports as transcribed (a finished turn's `usage`), else 0."""
    usage = event.get("usage")
    if event.get("type", "").endswith(".completed") and isinstance(usage, dict) and usage.get("type") == "duration":
        seconds = usage.get("seconds")
        return float(seconds) if isinstance(seconds, int | float) else 0.0
    return 0.0


async def refuse(websocket: WebSocket, code: str, message: str, close_code: int) -> None:
    """Tell the client why in an `error` event, then close: accepted first if need be, since a
    refused handshake tells a client nothing it can show."""
    if websocket.client_state == WebSocketState.CONNECTING:
        await websocket.accept(subprotocol=subprotocol(websocket))
    kind = "server_error" if close_code in (TRY_AGAIN_LATER, SERVICE_RESTART) else "invalid_request_error"
    await websocket.send_text(json.dumps(error_event(code, message, kind), ensure_ascii=False))
    await websocket.close(close_code, message[:120])


@router.websocket("/v1/realtime")
async def realtime(
    websocket: WebSocket,
    caller: WorkKeyDep,
    pipeline: PipelineDep,
    settings: SettingsDep,
    hub: StreamsDep,
    metrics: MetricsDep,
    usage: KeyUsageDep,
) -> None:
    # A client secret was minted for a transcription session: it says what ?intent would.
    if websocket.query_params.get("intent") != "transcription" and caller.session is None:
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
    await websocket.accept(subprotocol=subprotocol(websocket))
    outbox = Outbox(websocket, settings.streams.stream_send_timeout_seconds)
    connection: Connection | None = None

    async def send(event: dict[str, Any]) -> None:
        await outbox.send(event)
        seconds = turn_seconds(event)
        if seconds:
            usage.charge(caller.label, seconds)
            if usage.over_budget(caller.label, caller.limits) and connection is not None:
                assert caller.limits is not None
                metrics.rejected.labels("key_limit").inc()
                budget = f"{caller.limits.audio_seconds_per_hour:g}"
                message = f"this key has used its {budget} audio seconds of the last hour"
                connection.end_soon("key_limit", "key_audio_limit", message, TRY_AGAIN_LATER)

    session = RealtimeSession(pipeline, settings.streams, send, metrics)
    # What the client secret was minted with applies before anything the client sends.
    opening = [json.dumps({"type": "session.update", "session": caller.session})] if caller.session else []
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
                opening=opening,
            )
            await connection.run()
    except StreamLimitError:
        await session.close()
        metrics.rejected.labels("stream_limit").inc()
        limit = f"all {hub.max_streams} live streams are taken; retry later"
        await refuse(websocket, "too_many_streams", limit, TRY_AGAIN_LATER)
