"""The agedchip HTTP service (DESIGN §5–6): a thin FastAPI layer over chipsim, wired here.

``create_app(settings)`` builds the app in three steps: routers, error handlers, middleware;
``python -m service`` serves it with uvicorn. Blocking work (inference, programming, evaluation,
drift metrics, the gauge refresh, recalibration) runs in worker threads, never on the event
loop; programming and evaluation have their own capacity limiters so a slow one never holds the
threads inference needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections.abc import AsyncIterator

import anyio
from fastapi import APIRouter, FastAPI

from service import __version__, errors
from service.background import Refresher
from service.jobs import JobTable
from service.metrics import Metrics
from service.middleware import ServiceMiddleware
from service.registry import Registry, program_default_chip
from service.routes import chips, infer, oip, ops, recalibration
from service.routes.deps import Limiters
from service.settings import Settings

#: In the order they are matched (and listed in the OpenAPI document).
ROUTERS: tuple[APIRouter, ...] = (recalibration.router, chips.router, infer.router, ops.router, oip.router)
#: Routes whose bodies are uploads (``max_upload_bytes`` instead of ``max_request_bytes``).
UPLOAD_PATHS = frozenset({"/program"})
DESCRIPTION = ("Deploy neural networks on an emulated, ageing analog in-memory-computing (PCM) chip. Ages are "
               "seconds after programming or durations ('1h', '30d', '1y' = 365 d, ISO-8601 'P1Y'). "
               "Errors: `{\"error\": {\"status\", \"field\", \"message\"}}`.")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. Chips are loaded (and the default chip programmed) at startup."""
    settings = settings or Settings()
    registry = Registry(settings)
    limiters = Limiters(infer=anyio.CapacityLimiter(settings.infer_concurrency or os.cpu_count() or 2),
                        program=anyio.CapacityLimiter(settings.program_concurrency),
                        eval=anyio.CapacityLimiter(settings.eval_concurrency))
    app = FastAPI(title="agedchip", version=__version__, description=DESCRIPTION, lifespan=_lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = Metrics(registry)
    app.state.limiters = limiters
    app.state.refresher = Refresher(registry, settings, limiter=limiters.eval)
    app.state.recalibration_jobs = JobTable(concurrency=settings.program_concurrency)
    app.state.started = False
    add_routers(app)
    add_error_handlers(app)
    add_middleware(app)
    return app


def add_routers(app: FastAPI) -> None:
    """The routes of every router, in the app's own route table: FastAPI matches an included
    router as a nested layer on every request, and the middleware labels requests refused
    before routing by the template of an app-level route."""
    for router in ROUTERS:
        app.router.routes.extend(router.routes)


def add_error_handlers(app: FastAPI) -> None:
    errors.install(app)


def add_middleware(app: FastAPI) -> None:
    app.add_middleware(ServiceMiddleware, settings=app.state.settings, metrics=app.state.metrics,
                       upload_paths=UPLOAD_PATHS)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state

    def startup() -> None:
        state.registry.load_all()
        program_default_chip(state.registry, state.settings)

    await anyio.to_thread.run_sync(startup)
    gc.collect()
    gc.freeze()  # long-lived startup objects leave the GC's generations: shorter pauses under load
    task = asyncio.create_task(state.refresher.run())
    state.started = True
    try:
        yield
    finally:
        state.refresher.stop()
        await anyio.to_thread.run_sync(state.recalibration_jobs.shutdown)  # cancels jobs: no half chip
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


__all__ = ["create_app"]
