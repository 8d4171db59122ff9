"""Liveness, readiness and the metrics scrape."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.common import engine_of, has_bearer, settings_of

router = APIRouter()


@router.api_route("/healthz", methods=["GET", "HEAD"])
async def healthz() -> JSONResponse:
    """Alive: answers at once, whatever the workers are doing (no I/O, no locks)."""
    return JSONResponse({"status": "ok"})


@router.api_route("/readyz", methods=["GET", "HEAD"])
async def readyz(request: Request) -> JSONResponse:
    """200 once the model is loaded and its warm-up inference succeeded; 503 while loading, after a
    failure and while draining for shutdown. A failure's details (paths, hub errors) are shown only
    to a caller with the admin token; everyone else reads which model failed and how."""
    engine = engine_of(request)
    if request.app.state.lifecycle.draining:
        return JSONResponse({"status": "draining"}, status_code=503)
    backend = engine.backend
    if backend is None:
        body = {"status": engine.state}
        if engine.error:
            admin = has_bearer(request, settings_of(request).server.admin_token)
            body["error"] = engine.error if admin else (engine.public_error or "")
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "backend": backend.name, "model": backend.model, "device": backend.device})


metrics_router = APIRouter()


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text, or OpenMetrics (with exemplars) when the Accept header asks for it."""
    body, content_type = request.app.state.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
