"""What routes depend on: the API-key checks as FastAPI dependencies and typed access to the
objects :func:`service.app.create_app` keeps in the app state."""

from __future__ import annotations

from dataclasses import dataclass

import anyio
from fastapi import Request

from service.auth import check_admin, check_infer
from service.jobs import JobTable
from service.registry import Registry
from service.settings import Settings


@dataclass(frozen=True)
class Limiters:
    """Worker threads per kind of blocking work: programming and evaluation have their own, so a
    slow one never holds the threads inference needs."""

    infer: anyio.CapacityLimiter
    program: anyio.CapacityLimiter
    eval: anyio.CapacityLimiter


def registry_of(request: Request) -> Registry:
    return request.app.state.registry


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def limiters_of(request: Request) -> Limiters:
    return request.app.state.limiters


def jobs_of(request: Request) -> JobTable:
    return request.app.state.recalibration_jobs


def require_admin(request: Request) -> None:
    """Dependency of management routes (program, delete, recalibrate, cancel)."""
    check_admin(settings_of(request), request.headers)


def require_infer(request: Request) -> None:
    """Dependency of inference, evaluation and job routes."""
    check_infer(settings_of(request), request.headers)
