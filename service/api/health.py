"""Liveness, readiness and the metrics scrape: the public probes, the only routes without auth."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response

from service.api.deps import IsAdminDep, MetricsDep, PipelineDep
from service.api.schemas import Liveness, Readiness

router = APIRouter()
# Routes anyone who can reach the port may call (tests/test_auth.py checks that all others refuse).
PUBLIC_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})


@router.api_route("/healthz", methods=["GET", "HEAD"])
async def healthz() -> Liveness:
    """Alive: answers at once, whatever the workers are doing (no I/O, no locks)."""
    return Liveness()


@router.api_route("/readyz", methods=["GET", "HEAD"], response_model=Readiness, responses={503: {"model": Readiness}})
async def readyz(pipeline: PipelineDep, admin: IsAdminDep) -> JSONResponse:
    """200 once the model is loaded and its warm-up inference succeeded; 503 while loading, after a
    failure and while draining for shutdown. A failure's details (paths, hub errors) are shown only
    to a caller with the admin token; everyone else reads which model failed and how."""
    if pipeline.draining:
        return JSONResponse(Readiness(status="draining").body(), status_code=503)
    served = pipeline.served()
    if served is None:
        error = pipeline.load_error(detailed=admin)
        status = "failed" if pipeline.state == "failed" else "loading"
        state = Readiness(status=status, error=error) if error else Readiness(status=status)
        return JSONResponse(state.body(), status_code=503)
    ready = Readiness(status="ready", backend=served.backend, model=served.model, device=served.device)
    return JSONResponse(ready.body())


metrics_router = APIRouter()


@metrics_router.get("/metrics", include_in_schema=False)
async def metrics(registry: MetricsDep, accept: Annotated[str | None, Header()] = None) -> Response:
    """Prometheus text, or OpenMetrics (with exemplars) when the Accept header asks for it."""
    body, content_type = registry.render(accept)
    return Response(body, media_type=content_type)
