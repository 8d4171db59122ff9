"""`POST /v1/realtime/client_secrets`: a short-lived, single-use token for one Realtime session.

OpenAI's request and answer shapes, so `client.realtime.client_secrets.create(...)` works:

    {"expires_after": {"anchor": "created_at", "seconds": 60},          both optional
     "session": {"type": "transcription", "audio": {"input": {...}}}}
    -> {"value": "ek_...", "expires_at": <epoch seconds>, "session": {"type": "transcription", "id": ..., ...}}

Minted with a real key (a client secret cannot mint another: it opens only /v1/realtime). The
token opens one `/v1/realtime` session of that key, with its limits; `?intent=transcription` may
then be left out, since the token says what the session is. The `session` given here is applied
when the session opens, as its first `session.update` (the client sees `session.created`, then
`session.updated`; a setting the session refuses is an `error` event there). Only transcription
sessions are served. Lifetimes and storage: service.client_secrets.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field

from service.api.common import documented
from service.api.deps import ApiKeyDep, ClientSecretsDep, SettingsDep
from service.client_secrets import MAX_UNUSED_PER_KEY, TooManySecretsError
from service.errors import BadRequestError, ServiceError

router = APIRouter(prefix="/v1/realtime", tags=["realtime"])
MAX_SESSION_BYTES = 16 * 1024  # a session configuration is a few hundred bytes; it is stored per token


class TooManyClientSecretsError(ServiceError):
    """The key holds as many unused client secrets as it may (429)."""

    status = 429
    code = "too_many_client_secrets"
    reason = "key_limit"


class ExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"] = "created_at"
    seconds: int = Field(
        ge=10, le=7200, description="Lifetime from creation (OpenAI's range); cut to ASR_CLIENT_SECRET_MAX_SECONDS."
    )


class ClientSecretRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    expires_after: ExpiresAfter | None = Field(None, description="Default: ASR_CLIENT_SECRET_SECONDS.")
    session: dict[str, Any] | None = Field(
        None, description="A transcription session's configuration, applied when the session opens."
    )


class ClientSecretResponse(BaseModel):
    value: str = Field(
        description="The token (`ek_...`): a bearer token, or the subprotocol `openai-insecure-api-key.<value>`."
    )
    expires_at: int = Field(description="When it stops opening sessions, in seconds since the epoch.")
    session: dict[str, Any] = Field(description="The session it opens.")


@router.post("/client_secrets", responses=documented(401, 422, 429))
async def create_client_secret(
    body: ClientSecretRequest, caller: ApiKeyDep, settings: SettingsDep, store: ClientSecretsDep
) -> ClientSecretResponse:
    """A token for one Realtime transcription session of the caller's key, for a browser to use."""
    session = dict(body.session or {})
    kind = session.setdefault("type", "transcription")
    if kind != "transcription":
        raise BadRequestError(
            "only transcription sessions are served: session.type must be 'transcription'", param="session.type"
        )
    if len(json.dumps(session)) > MAX_SESSION_BYTES:
        raise BadRequestError(f"the session configuration is over {MAX_SESSION_BYTES} bytes", param="session")
    server = settings.server
    asked = body.expires_after.seconds if body.expires_after else server.client_secret_seconds
    seconds = min(asked, server.client_secret_max_seconds)
    try:
        token, expires_at = await asyncio.to_thread(store.mint, caller.key, caller.admin, session, seconds)
    except TooManySecretsError:
        raise TooManyClientSecretsError(
            f"this key holds {MAX_UNUSED_PER_KEY} unused client secrets; use or let some expire first",
            headers={"Retry-After": str(seconds)},
        ) from None
    shown = {**session, "id": f"sess_{uuid.uuid4().hex[:24]}", "object": "realtime.transcription_session"}
    return ClientSecretResponse(value=token, expires_at=int(expires_at), session=shown)
