"""What routes depend on: the API-key checks as FastAPI dependencies, typed access to the
objects :func:`service.app.create_app` keeps in the app state, and the watch that cancels work
nobody waits for any more."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import Request

from service.admission import Lanes
from service.auth import check_admin, check_infer
from service.fleets import FleetService
from service.forms import require_json
from service.jobs import JobTable
from service.problems import SHUTDOWN_RETRY_S, SHUTTING_DOWN, Cancelled, Unavailable
from service.registry import Registry
from service.settings import Settings

#: How often a long request checks whether its client is still there, seconds.
DISCONNECT_POLL_S = 0.1


def registry_of(request: Request) -> Registry:
    return request.app.state.registry


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def lanes_of(request: Request) -> Lanes:
    return request.app.state.lanes


def jobs_of(request: Request) -> JobTable:
    return request.app.state.recalibration_jobs


def fleets_of(request: Request) -> FleetService:
    return request.app.state.fleets


def stopping(request: Request) -> threading.Event:
    return request.app.state.stopping


async def require_admin(request: Request) -> None:
    """Dependency of management routes (program, delete, recalibrate, cancel). The checks here
    are async so that FastAPI runs them on the event loop: a sync dependency costs every request
    a round trip through a worker thread."""
    check_admin(settings_of(request), request.headers)


def require_writer(action: str, allow: tuple[str, ...] = ()):
    """Dependency of the routes that change the store: a read-only replica refuses them (405)
    before their body is read."""

    async def check(request: Request) -> None:
        registry_of(request).require_writer(action, allow)

    return check


async def require_infer(request: Request) -> None:
    """Dependency of every other route that computes or shows chips: inference, evaluation,
    drift, chip listing and summaries, the zoo, OIP model metadata, jobs."""
    check_infer(settings_of(request), request.headers)


async def require_json_body(request: Request) -> None:
    """Dependency of JSON routes: another declared content type is a 415 (before the body is read)."""
    require_json(request.headers.get("content-type", ""))


@asynccontextmanager
async def cancel_when_abandoned(request: Request) -> AsyncIterator[threading.Event]:
    """An event set when the client disconnects or the service starts stopping, for blocking
    work to poll; a :class:`Cancelled` raised inside becomes Unavailable when the service is
    stopping (the client is still there to read it)."""
    event = threading.Event()
    stop = stopping(request)

    async def watch() -> None:
        while not (stop.is_set() or await request.is_disconnected()):
            await anyio.sleep(DISCONNECT_POLL_S)
        event.set()

    # A plain task, not a task group: a task group would wrap the route's errors in an ExceptionGroup.
    watcher = asyncio.get_running_loop().create_task(watch())
    try:
        yield event
    except Cancelled:
        if stop.is_set():
            raise Unavailable(None, SHUTTING_DOWN, retry_after_s=SHUTDOWN_RETRY_S) from None
        raise
    finally:
        watcher.cancel()
