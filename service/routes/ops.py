"""Operations: Prometheus metrics, liveness, readiness."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.routes.deps import registry_of, stopping
from service.schemas import Health

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}}
)
async def prometheus(request: Request) -> Response:
    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/healthz", response_model=Health, summary="Liveness")
async def healthz(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok", "chips": registry_of(request).counts()})


@router.get("/readyz", response_model=Health, summary="Readiness (chips loaded)", responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    registry = registry_of(request)
    if stopping(request).is_set():  # out of the load balancer before the listener closes
        return JSONResponse({"status": "stopping", "chips": registry.counts()}, status_code=503)
    ready = request.app.state.started and registry.loaded
    return JSONResponse(
        {"status": "ok" if ready else "starting", "chips": registry.counts()}, status_code=200 if ready else 503
    )
