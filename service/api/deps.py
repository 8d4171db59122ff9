"""Typed dependencies for the routers: the service objects, and auth as part of a route's signature.

A route that takes `ApiKeyDep` refuses a missing or wrong key (401) before its body runs: ASR_API_KEY
(named "default"), a key of the ASR_API_KEYS file (service.keys), or ASR_ADMIN_TOKEN (the caller
"admin", who sees every key's jobs). A route that transcribes takes `WorkKeyDep` instead, which
also holds one of the key's places in flight while it runs and refuses when the key has none left
or has spent its audio of the hour (429, service.key_limits). One that takes `AdminDep` refuses
anything but ASR_ADMIN_TOKEN (and 403 when none is set: the admin API is off, never open). So an
open route is visible at a glance: it takes none, and tests/test_auth.py walks every route to
prove that only the public probes are open. The same dependencies serve HTTP and WebSocket
routes; on a WebSocket the key may also come as the subprotocol browsers send
(`openai-insecure-api-key.<key>`) and may be a client secret (service.client_secrets), good for one
session; the app's error handler turns a refusal into an `error` event and a close code (service.app).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from fastapi import Depends
from starlette.requests import HTTPConnection

from service.client_secrets import PREFIX as CLIENT_SECRET_PREFIX
from service.client_secrets import ClientSecretStore
from service.config import Settings
from service.errors import ServiceError, UnauthorizedError
from service.jobs.runner import JobRunner
from service.key_limits import KeyUsage
from service.keys import ADMIN, ANONYMOUS, KeyLimits, KeyRing
from service.metrics import Metrics
from service.middleware import request_state
from service.pipeline import Pipeline
from service.quality.job import QualityJob
from service.quality.store import SampleStore
from service.streaming.hub import StreamHub

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pydantic import SecretStr

T = TypeVar("T")

# How browsers pass a key on a WebSocket, which they cannot give headers (OpenAI's JS client does this).
KEY_SUBPROTOCOL = "openai-insecure-api-key."


class AdminDisabledError(ServiceError):
    """The admin API is off: no ASR_ADMIN_TOKEN is configured (403)."""

    status = 403
    code = "review_api_disabled"
    reason = "unauthorized"


@dataclass(frozen=True)
class Caller:
    """Who is asking. `key` names the API key used ("default" for ASR_API_KEY, "admin" for
    ASR_ADMIN_TOKEN, a name from the keys file), None when the service runs without keys (open to
    anyone who can reach it). `limits` None: no per-key limits (the admin, or keys off).
    `session`: the Realtime session configuration a client secret was minted with."""

    key: str | None
    admin: bool = False
    limits: KeyLimits | None = None
    session: dict[str, Any] | None = None

    @property
    def label(self) -> str:
        """The key's name as metrics and logs show it (configured names only, never client input)."""
        return self.key or ANONYMOUS

    @property
    def owner_filter(self) -> str | None:
        """The owner whose jobs this caller may see; None: every job (the admin, or keys off)."""
        return None if self.admin or self.key is None else self.key


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def subprotocol_token(conn: HTTPConnection) -> str | None:
    """The token a WebSocket client offered as subprotocol `openai-insecure-api-key.<token>`, if any."""
    for offered in conn.scope.get("subprotocols") or ():
        if offered.startswith(KEY_SUBPROTOCOL) and len(offered) > len(KEY_SUBPROTOCOL):
            return str(offered[len(KEY_SUBPROTOCOL) :])
    return None


def _matches(token: str | None, expected: SecretStr | None) -> bool:
    if expected is None or token is None:
        return False
    return hmac.compare_digest(token.encode(), expected.get_secret_value().encode())


def token_matches(conn: HTTPConnection, expected: SecretStr | None) -> bool:
    """Whether the request carries `expected` as its bearer token (False when none is configured)."""
    return _matches(bearer_token(conn), expected)


def _from_state(attribute: str, kind: type[T]) -> Callable[[HTTPConnection], T]:
    """A dependency that hands a route the service object create_app put on app.state."""

    def get(conn: HTTPConnection) -> T:
        value: T = getattr(conn.app.state, attribute)
        return value

    get.__name__ = f"get_{attribute}"
    return get


get_settings = _from_state("settings", Settings)
get_pipeline = _from_state("pipeline", Pipeline)
get_metrics = _from_state("metrics", Metrics)
get_jobs = _from_state("jobs", JobRunner)
get_streams = _from_state("streams", StreamHub)
get_key_ring = _from_state("keys", KeyRing)
get_key_usage = _from_state("key_usage", KeyUsage)
get_client_secrets = _from_state("client_secrets", ClientSecretStore)


def api_caller(conn: HTTPConnection) -> Caller:
    """The caller of a client route; raises UnauthorizedError (401) for a missing or wrong key, or
    (WebSocket) a client secret that is unknown, expired or used."""
    caller = _identify(conn)
    request_state(conn.scope)["key"] = caller.label  # the access log's and asr_key_requests_total's
    return caller


def _identify(conn: HTTPConnection) -> Caller:
    keys = get_key_ring(conn)
    websocket = conn.scope["type"] == "websocket"
    token = bearer_token(conn) or (subprotocol_token(conn) if websocket else None)
    if websocket and token is not None and token.startswith(CLIENT_SECRET_PREFIX):
        # Checked even with keys off: a client that shows a secret gets what it was minted for, once.
        return _redeem(conn, keys, token)
    if not keys.enabled:
        return Caller(None)
    if token is None:
        raise UnauthorizedError()
    key = keys.identify(token)
    if _matches(token, get_settings(conn).server.admin_token):
        return Caller(ADMIN, admin=True)
    if key is None:
        raise UnauthorizedError()
    return Caller(key.name, limits=key.limits)


def _redeem(conn: HTTPConnection, keys: KeyRing, token: str) -> Caller:
    secret = get_client_secrets(conn).redeem(token)
    if secret is None:
        raise UnauthorizedError("the client secret is unknown, expired or already used: mint a new one")
    if secret.admin:
        return Caller(ADMIN, admin=True, session=secret.session)
    if secret.key is None:
        if keys.enabled:
            raise UnauthorizedError("the client secret was minted before keys were required: mint a new one")
        return Caller(None, session=secret.session)
    key = keys.get(secret.key)
    if key is None:
        raise UnauthorizedError("the key that minted this client secret is no longer accepted")
    return Caller(key.name, limits=key.limits, session=secret.session)


def work_caller(conn: HTTPConnection, caller: Annotated[Caller, Depends(api_caller)]) -> Iterator[Caller]:
    """The caller of a route that transcribes: it holds one of its key's places in flight until its
    answer has gone out (or its stream has closed); raises KeyAudioLimitError / KeyBusyError (429)
    when the key's audio of the hour is spent or it has no place left. The audio seconds the answer
    carried (the request state's `audio_seconds`, set with the answer) are charged to the key."""
    usage = get_key_usage(conn)
    release = usage.admit(caller.label, caller.limits)
    try:
        yield caller
    finally:
        release()
        seconds = request_state(conn.scope).get("audio_seconds")
        if seconds:
            usage.charge(caller.label, float(seconds))


def admin(conn: HTTPConnection) -> None:
    """Require ASR_ADMIN_TOKEN; raises AdminDisabledError (403) when none is set, UnauthorizedError (401)."""
    expected = get_settings(conn).server.admin_token
    if expected is None:
        raise AdminDisabledError("the sample review API is off: set ASR_ADMIN_TOKEN to enable it")
    if not token_matches(conn, expected):
        raise UnauthorizedError()
    request_state(conn.scope)["key"] = ADMIN


def is_admin(conn: HTTPConnection) -> bool:
    """Whether the caller holds ASR_ADMIN_TOKEN (for routes that show more to the admin, never less)."""
    return token_matches(conn, get_settings(conn).server.admin_token)


def get_sample_store(conn: HTTPConnection) -> SampleStore:
    """The quality sample store; raises AdminDisabledError (403) when the quality loop keeps none."""
    store: SampleStore | None = conn.app.state.store
    if store is None:
        raise AdminDisabledError("the sample store is off (ASR_QUALITY_SAMPLE_RATE=0)")
    return store


def get_quality_job(conn: HTTPConnection) -> QualityJob:
    job: QualityJob | None = conn.app.state.quality_job
    if job is None:
        raise AdminDisabledError("the sample store is off (ASR_QUALITY_SAMPLE_RATE=0)")
    return job


SettingsDep = Annotated[Settings, Depends(get_settings)]
PipelineDep = Annotated[Pipeline, Depends(get_pipeline)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
JobsDep = Annotated[JobRunner, Depends(get_jobs)]
StreamsDep = Annotated[StreamHub, Depends(get_streams)]
ApiKeyDep = Annotated[Caller, Depends(api_caller)]
WorkKeyDep = Annotated[Caller, Depends(work_caller)]
KeyUsageDep = Annotated[KeyUsage, Depends(get_key_usage)]
ClientSecretsDep = Annotated[ClientSecretStore, Depends(get_client_secrets)]
AdminDep = Annotated[None, Depends(admin)]
IsAdminDep = Annotated[bool, Depends(is_admin)]
# Admin routes list AdminDep before these, so that an unauthorised caller learns nothing of the store.
SampleStoreDep = Annotated[SampleStore, Depends(get_sample_store)]
QualityJobDep = Annotated[QualityJob, Depends(get_quality_job)]
