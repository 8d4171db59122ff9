"""Typed dependencies for the routers: the service objects, and auth as part of a route's signature.

A route that takes `ApiKeyDep` refuses a missing or wrong ASR_API_KEY (401) before its body runs;
one that takes `AdminDep` refuses anything but ASR_ADMIN_TOKEN (and 403 when none is set: the
admin API is off, never open). So an open route is visible at a glance: it takes neither, and
tests/test_auth.py walks every route to prove that only the public probes are open. The same
dependencies serve HTTP and WebSocket routes; on a WebSocket the app's error handler turns the
refusal into an `error` event and a close code (service.app).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from service.config import Settings
from service.errors import ServiceError, UnauthorizedError
from service.jobs.runner import JobRunner
from service.metrics import Metrics
from service.pipeline import Pipeline
from service.quality.job import QualityJob
from service.quality.store import SampleStore
from service.streaming.hub import StreamHub

if TYPE_CHECKING:
    from pydantic import SecretStr


class AdminDisabledError(ServiceError):
    """The admin API is off: no ASR_ADMIN_TOKEN is configured (403)."""

    status = 403
    code = "review_api_disabled"
    reason = "unauthorized"


@dataclass(frozen=True)
class Caller:
    """Who is asking. `key` names the API key used ("default" for ASR_API_KEY), None when the
    service runs without keys (open to anyone who can reach it)."""

    key: str | None


def bearer_token(conn: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, if there is one."""
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def token_matches(conn: HTTPConnection, expected: SecretStr | None) -> bool:
    """Whether the request carries `expected` as its bearer token (False when none is configured)."""
    token = bearer_token(conn)
    if expected is None or token is None:
        return False
    return hmac.compare_digest(token.encode(), expected.get_secret_value().encode())


def get_settings(conn: HTTPConnection) -> Settings:
    settings: Settings = conn.app.state.settings
    return settings


def get_pipeline(conn: HTTPConnection) -> Pipeline:
    pipeline: Pipeline = conn.app.state.pipeline
    return pipeline


def get_metrics(conn: HTTPConnection) -> Metrics:
    metrics: Metrics = conn.app.state.metrics
    return metrics


def get_jobs(conn: HTTPConnection) -> JobRunner:
    runner: JobRunner = conn.app.state.jobs
    return runner


def get_streams(conn: HTTPConnection) -> StreamHub:
    hub: StreamHub = conn.app.state.streams
    return hub


def api_caller(conn: HTTPConnection) -> Caller:
    """The caller of a transcription route; raises UnauthorizedError (401) for a missing or wrong key."""
    expected = get_settings(conn).server.api_key
    if expected is None:
        return Caller(None)
    if not token_matches(conn, expected):
        raise UnauthorizedError()
    return Caller("default")


def admin(conn: HTTPConnection) -> None:
    """Require ASR_ADMIN_TOKEN; raises AdminDisabledError (403) when none is set, UnauthorizedError (401)."""
    expected = get_settings(conn).server.admin_token
    if expected is None:
        raise AdminDisabledError("the sample review API is off: set ASR_ADMIN_TOKEN to enable it")
    if not token_matches(conn, expected):
        raise UnauthorizedError()


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
AdminDep = Annotated[None, Depends(admin)]
IsAdminDep = Annotated[bool, Depends(is_admin)]
# Admin routes list AdminDep before these, so that an unauthorised caller learns nothing of the store.
SampleStoreDep = Annotated[SampleStore, Depends(get_sample_store)]
QualityJobDep = Annotated[QualityJob, Depends(get_quality_job)]
