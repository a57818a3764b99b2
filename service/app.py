"""The agedchip HTTP service (DESIGN §5–6): a thin FastAPI layer over chipsim, wired here.

``create_app(settings)`` builds the app in three steps: routers, error handlers, middleware;
``python -m service`` serves it with uvicorn. Blocking work (inference, programming, evaluation,
drift metrics, the gauge refresh, recalibration) runs in worker threads, never on the event
loop. Inference, evaluation/drift and programming each have a bounded line
(:mod:`service.admission`: 429 + Retry-After when full), so a slow workload never holds the
threads another needs and nothing waits without bound; the refresher has its own thread.
``app.state.stopping`` is set when shutdown begins (by the server's signal handler, see
``service.__main__``, or at the latest by the lifespan's end).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI

from chipsim import heap
from service import __version__, errors, openapi_doc
from service.admission import lanes_for
from service.background import Refresher
from service.batched_infer import run_batch
from service.batching import Batcher
from service.default_chip import program_default_chip
from service.fleets import EVAL_LANE, FleetService
from service.jobs import JobTable
from service.metrics import Metrics
from service.middleware import ServiceMiddleware
from service.registry import Registry
from service.replica import follow_writer
from service.routes import chips, docs, fleets, infer, oip, ops, recalibration
from service.routes.hot import hot_routes
from service.settings import Settings

#: In the order they are matched (and listed in the OpenAPI document).
ROUTERS: tuple[APIRouter, ...] = (
    recalibration.router,
    chips.router,
    fleets.router,
    infer.router,
    ops.router,
    oip.router,
    docs.router,
)
#: Routes whose bodies are uploads (``max_upload_bytes`` instead of ``max_request_bytes``).
UPLOAD_PATHS = frozenset({"/program"})
#: Routes without a key and served while the service stops: probes and the scrape target (the
#: documentation and the constant OIP server metadata need no key either).
PROBE_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready"})
DESCRIPTION = (
    "Deploy neural networks on an emulated, ageing analog in-memory-computing (PCM) chip. Ages are "
    "seconds after programming or durations ('1h', '30d', '1y' = 365 d, ISO-8601 'P1Y'). "
    'Errors: `{"error": {"status", "field", "message"}}`; under /v2 the Open Inference Protocol\'s '
    '`{"error": "<message>", "status", "field"}`. Offline docs: /docs, /redoc.'
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. Chips are loaded (and the default chip programmed) at startup. Raises
    :class:`chipsim.store.StoreLockedError` when another process writes the state folder (set
    ``read_only`` to serve beside it) and other ``ChipStoreError`` when the folder is unusable."""
    settings = settings or Settings()
    registry = Registry(settings)
    lanes = lanes_for(
        settings.infer_concurrency or os.cpu_count() or 2,
        settings.eval_concurrency,
        settings.program_concurrency,
        settings.max_queue_infer,
        settings.max_queue_eval,
        settings.max_queue_program,
        settings.queue_timeout_s,
    )
    app = FastAPI(
        title="agedchip",
        version=__version__,
        description=DESCRIPTION,
        lifespan=_lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's OpenTelemetry hooks look up the global providers and environment on every
        # request (seen in a profile); the service exports Prometheus metrics instead
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )  # service.routes.docs serves both offline
    app.state.settings = settings
    app.state.registry = registry
    app.state.lanes = lanes
    app.state.refresher = Refresher(registry, settings, lanes=lanes)
    # One job table (GET /jobs): programming jobs (recalibration, fleets) and fleet evaluations, each
    # lane with the concurrency of its request lane.
    app.state.recalibration_jobs = JobTable(
        concurrency=settings.program_concurrency, lanes={EVAL_LANE: settings.eval_concurrency}
    )
    app.state.fleets = FleetService(registry, settings, app.state.recalibration_jobs)
    app.state.metrics = Metrics(registry, lanes, app.state.fleets)
    batching = settings.batch_config()
    app.state.batcher = (
        Batcher(batching, lanes.infer, run_batch, app.state.metrics.observe_batch) if batching.enabled else None
    )
    app.state.started = False
    app.state.stopping = threading.Event()
    add_routers(app)
    add_error_handlers(app)
    add_middleware(app)
    add_openapi(app)
    return app


def add_routers(app: FastAPI) -> None:
    """The routes of every router, in the app's own route table: FastAPI matches an included
    router as a nested layer on every request, and the middleware labels requests refused
    before routing by the template of an app-level route. The inference routes' hot path
    (:mod:`service.routes.hot`) comes first."""
    app.router.routes.extend(hot_routes())
    for router in ROUTERS:
        app.router.routes.extend(router.routes)


def add_openapi(app: FastAPI) -> None:
    """The OpenAPI document FastAPI builds, completed once by :func:`service.openapi_doc.complete`."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            openapi_doc.complete(build())  # build() caches the document in app.openapi_schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_error_handlers(app: FastAPI) -> None:
    errors.install(app)


def add_middleware(app: FastAPI) -> None:
    app.add_middleware(
        ServiceMiddleware,
        settings=app.state.settings,
        metrics=app.state.metrics,
        upload_paths=UPLOAD_PATHS,
        stopping=app.state.stopping,
        open_paths=PROBE_PATHS,
    )


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state

    def startup() -> None:
        state.fleets.open()  # rolls back half-programmed fleets first: their chips are never served
        state.registry.load_all()
        program_default_chip(state.registry, state.settings)

    heap.limit_retention()  # a chip's temporaries are unmapped when freed (chipsim.heap)
    await anyio.to_thread.run_sync(startup)
    gc.collect()
    gc.freeze()  # long-lived startup objects leave the GC's generations: shorter pauses under load
    task = asyncio.create_task(state.refresher.run())
    tasks = [task]
    if state.settings.read_only:
        tasks.append(
            asyncio.create_task(follow_writer(state.registry, state.settings.read_only_relist_seconds, state.stopping))
        )
    state.started = True
    try:
        yield
    finally:
        state.stopping.set()
        state.refresher.stop()
        await anyio.to_thread.run_sync(state.recalibration_jobs.shutdown)  # cancels jobs: no half chip
        for t in tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        state.registry.close()  # the writer's lock goes with the store, not only with the process


__all__ = ["create_app"]
