"""create_app(settings) -> FastAPI: the one place where the service's parts are wired.

Nothing heavy happens at import or in create_app: the lifespan starts the pipeline (its workers,
and the model's load in the background, so /healthz answers while a large model loads and
/readyz says when it is done), the job runner and the quality job, and stops them in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import multiprocess
from starlette.exceptions import HTTPException

from service.api import asr_webservice, client_secrets, health, jobs, openai, realtime, samples, transcribe
from service.api import quality as quality_api
from service.api.common import FORM_OVERHEAD_BYTES, UPLOAD_ROUTES, describe_validation_error, first_field
from service.body_limit import BodyLimitMiddleware
from service.client_secrets import ClientSecretStore
from service.config import Settings
from service.connections import ConnectionGuard
from service.database import open_shared
from service.errors import ServiceError
from service.gpu import GpuCollector
from service.jobs.runner import JobRunner
from service.jobs.store import JobStore
from service.key_limits import KeyUsage
from service.keys import ADMIN, KeyLimits, KeyRing
from service.lifecycle import Lifecycle
from service.logs import configure_logging
from service.metrics import Metrics, worker_pids
from service.middleware import ObserverMiddleware, request_state
from service.models import shadow_model_id
from service.pipeline import build_pipeline
from service.quality.job import QualityJob
from service.quality.shadow import ShadowScorer
from service.quality.store import SampleStore
from service.streaming.hub import StreamHub
from service.ui import router as console
from service.wyoming.server import WyomingServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from starlette.requests import HTTPConnection

    from service.engine import BackendFactory
    from service.pipeline import Pipeline

log = logging.getLogger(__name__)

# HTTP statuses raised by the framework (not by our code), with the code and rejection
# reason they are answered and counted with.
_HTTP_CODES = {
    400: ("bad_request", "bad_request"),
    404: ("not_found", None),
    405: ("method_not_allowed", None),
    413: ("upload_too_large", "too_large"),
}


def create_app(
    settings: Settings | None = None,
    *,
    backend_factory: BackendFactory | None = None,
    metrics: Metrics | None = None,
    restore_counters: bool | None = None,
    drain_on_signals: bool = False,
) -> FastAPI:
    """Build the service. `backend_factory` replaces the engine (tests); `restore_counters`
    defaults to True except in multiprocess mode, where `serve` restores them once;
    `drain_on_signals` (set by `serve`) drains on SIGTERM before the server stops and takes over the
    event loop's accept errors (service.connections)."""
    settings = settings or Settings()
    configure_logging(settings.server)
    metrics = metrics or Metrics()
    metrics.add_collector(GpuCollector(_own_pids(metrics)))
    quality = settings.quality
    shared = open_shared(settings.database)  # None: each store keeps an SQLite file
    store = (
        SampleStore(quality.dir, quality.max_samples, quality.retention_days, shared)
        if quality.sample_rate > 0
        else None
    )
    job = QualityJob(store, metrics, quality.normalizer) if store else None
    lifecycle = Lifecycle(settings.server.shutdown_grace_seconds)
    connections = ConnectionGuard(settings.server, metrics)  # read by serve's protocol (GuardedHttpProtocol)
    pipeline = build_pipeline(settings, metrics, backend_factory, store, lifecycle)
    keys = KeyRing(settings.server.api_key, settings.server.api_keys, KeyLimits.of(settings.keys))
    key_usage = KeyUsage(metrics, [*keys.names(), ADMIN])
    job_store = JobStore(settings.jobs.dir, shared)
    runner = JobRunner(job_store, pipeline, settings, metrics, key_usage)
    # Beside the job table, so that every process and replica redeems what any of them minted.
    secrets = ClientSecretStore(job_store.database)
    shadow = _shadow_scorer(settings, store, pipeline, metrics)
    hub = StreamHub(settings.streams.max_streams, metrics, lifecycle)
    # Home Assistant's protocol on its own port, on the same pipeline and stream limit (ASR_WYOMING_PORT).
    wyoming = WyomingServer(settings, pipeline, metrics, hub) if settings.wyoming.port is not None else None
    if restore_counters is None:
        restore_counters = not metrics.multiprocess

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await pipeline.start()
        if drain_on_signals:
            lifecycle.install_signal_handlers()
            connections.install(asyncio.get_running_loop())
        await asyncio.to_thread(runner.refresh_gauges)
        tasks = [asyncio.create_task(runner.run_forever(), name="jobs")]
        if job is not None:
            metrics.quality_enabled.set(1)
            if restore_counters:
                await asyncio.to_thread(job.restore_counters)
            tasks.append(asyncio.create_task(job.run_forever(quality.interval_seconds), name="quality-job"))
        if shadow is not None:
            tasks.append(asyncio.create_task(shadow.run_forever(settings.shadow.interval_seconds), name="shadow"))
        try:
            if wyoming is not None:
                await wyoming.start()  # inside: a port already taken still stops what started before
            yield
        finally:
            lifecycle.restore_signal_handlers()
            if wyoming is not None:
                await wyoming.stop()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(*tasks, return_exceptions=True)
            await pipeline.stop()
            if shared is not None:
                await asyncio.to_thread(shared.close)
            if metrics.multiprocess:
                # uvicorn has no child-exit hook: drop this worker's live gauges on the way out.
                multiprocess.mark_process_dead(os.getpid())

    app = FastAPI(
        title="ASR service",
        summary="Speech recognition that measures itself: latency, real-time factor and word error rate.",
        version="0.1.0",
        lifespan=lifespan,
    )
    # What the routers' typed dependencies (service.api.deps) hand them; nothing else is shared.
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.pipeline = pipeline
    app.state.store = store
    app.state.quality_job = job
    app.state.shadow = shadow
    app.state.jobs = runner
    app.state.keys = keys
    app.state.key_usage = key_usage
    app.state.client_secrets = secrets
    app.state.streams = hub
    app.state.connections = connections

    app.include_router(health.router)
    if settings.server.metrics_port is None:
        app.include_router(health.metrics_router)
    app.include_router(transcribe.router)
    app.include_router(openai.router)
    app.include_router(asr_webservice.router)
    app.include_router(jobs.router)
    app.include_router(realtime.router)
    app.include_router(client_secrets.router)
    app.include_router(samples.router)
    app.include_router(quality_api.router)
    app.include_router(console.router)
    _install_error_handlers(app, metrics)
    upload_limit = settings.limits.max_upload_bytes + FORM_OVERHEAD_BYTES
    app.add_middleware(
        BodyLimitMiddleware,
        limit_for=lambda path: upload_limit if path in UPLOAD_ROUTES else FORM_OVERHEAD_BYTES,
    )
    app.add_middleware(ObserverMiddleware, metrics=metrics)
    return app


def serve_app() -> FastAPI:
    """The app `serve` runs in each worker process (uvicorn's factory): settings from the
    environment, draining on SIGTERM."""
    return create_app(drain_on_signals=True)


def _shadow_scorer(
    settings: Settings, store: SampleStore | None, pipeline: Pipeline, metrics: Metrics
) -> ShadowScorer | None:
    """The shadow scorer when ASR_SHADOW_MODEL is set and the quality loop keeps samples."""
    shadow = settings.shadow
    if shadow.model is None:
        return None
    if store is None:
        log.warning(
            "ASR_SHADOW_MODEL is set but the quality loop is off (ASR_QUALITY_SAMPLE_RATE=0): no shadow scoring"
        )
        return None
    model = shadow_model_id(settings)
    assert model is not None
    return ShadowScorer(settings, store, pipeline, metrics, model)


def _own_pids(metrics: Metrics) -> Any:
    def pids() -> set[int]:
        if metrics.multiprocess:
            return set(worker_pids(os.environ["PROMETHEUS_MULTIPROC_DIR"]))
        return {os.getpid()}

    return pids


def _error_body(status: int, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    # `type` and `param` mirror OpenAI's error shape, which its client parses.
    kind = "server_error" if status >= 500 else "invalid_request_error"
    return {"error": {"code": code, "message": message, "type": kind, "param": param}}


def _install_error_handlers(app: FastAPI, metrics: Metrics) -> None:
    def reject(
        conn: HTTPConnection,
        status: int,
        code: str,
        message: str,
        reason: str | None,
        headers: dict[str, str] | None = None,
        param: str | None = None,
    ) -> JSONResponse:
        if reason is not None:
            metrics.rejected.labels(reason).inc()
        request_state(conn.scope)["error"] = code
        return JSONResponse(_error_body(status, code, message, param), status_code=status, headers=headers)

    @app.exception_handler(ServiceError)
    async def service_error(conn: HTTPConnection, exc: ServiceError) -> JSONResponse | None:
        if isinstance(conn, WebSocket):
            # A refusal before the session began (auth, a dependency): an error event and a close.
            if exc.reason is not None:
                metrics.rejected.labels(exc.reason).inc()
            await realtime.refuse(conn, exc.code, exc.message, realtime.close_code_for(exc.status))
            return None
        return reject(conn, exc.status, exc.code, exc.message, exc.reason, exc.headers, exc.param)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        message = describe_validation_error(exc)  # type: ignore[arg-type]
        param = first_field(exc)  # type: ignore[arg-type]
        return reject(request, 422, "invalid_parameter", message, "bad_request", param=param)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code, reason = _HTTP_CODES.get(exc.status_code, ("http_error", None))
        return reject(request, exc.status_code, code, str(exc.detail), reason, dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return JSONResponse(_error_body(500, "internal_error", "internal error; see the service log"), status_code=500)
