"""Liveness, readiness and the metrics scrape."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from service.api.common import transcriber_of

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    """Alive: answers at once, whatever the workers are doing (no I/O, no locks)."""
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """200 once the model is loaded and its warm-up inference succeeded; 503 before or on failure."""
    transcriber = transcriber_of(request)
    backend = transcriber.backend
    if backend is None:
        body = {"status": transcriber.state}
        if transcriber.error:
            body["error"] = transcriber.error
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ready", "backend": backend.name, "model": backend.model, "device": backend.device})


metrics_router = APIRouter()


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus text, or OpenMetrics (with exemplars) when the Accept header asks for it."""
    body, content_type = request.app.state.metrics.render(request.headers.get("accept"))
    return Response(body, media_type=content_type)
