"""The HTTP edge of every error (DESIGN §5): status codes and bodies, native and OIP.

The only module that maps :mod:`service.problems` (and the chipsim errors that reach the edge)
to status codes, the way KServe's ``errors.py`` does. Native routes answer
``{"error": {"status", "field", "message"}}``; under ``/v2`` (Open Inference Protocol) the body is
the protocol's ``{"error": "<message>"}`` with ``status`` and ``field`` beside it, so Triton and
KServe clients can read the message, and invalid input is the protocol's 400 rather than 422.
``field`` names the request field at fault in dotted form (``inputs.x``, ``profile.drift_scale``,
``age``, ``chip_id``) or is null. An unexpected failure is a 500 with a generic message; its
traceback goes to the log only. Problems that may pass (a full queue, the memory budget, a storage
error, shutdown) carry ``Retry-After``. A client that disconnected gets nothing, but the request is
recorded as 499 (nginx's "client closed request"): a 4xx, never an error of the service.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from chipsim import ChipCorruptError, ChipExistsError, ChipNotFoundError, ProfileError
from chipsim.compiler import CompileError
from chipsim.fleet.errors import FleetError
from service.metrics import CLIENT_CLOSED
from service.problems import (
    STORAGE_FULL_ERRNOS,
    Cancelled,
    Conflict,
    InvalidField,
    NotFound,
    Overloaded,
    Problem,
    ReadOnly,
    StorageFull,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    fleet_problem,
    invalid_value,
    loc_to_field,
    storage_problem,
    validation_message,
)

log = logging.getLogger("agedchip.service")

#: Status code of each problem on the native API, by class (the first match along the MRO).
STATUS: dict[type[Problem], int] = {
    InvalidField: 422,
    NotFound: 404,
    Conflict: 409,
    Unauthorized: 401,
    UnsupportedMediaType: 415,
    Unavailable: 503,
    Overloaded: 429,
    StorageFull: 507,
    Cancelled: CLIENT_CLOSED,
    ReadOnly: 405,
}

#: The Open Inference Protocol reports invalid input as 400.
OIP_STATUS: dict[type[Problem], int] = {**STATUS, InvalidField: 400}


def is_oip(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def status_of(problem: Problem, oip: bool = False) -> int:
    table = OIP_STATUS if oip else STATUS
    return next((table[cls] for cls in type(problem).__mro__ if cls in table), 500)


def error_body(status: int, message: str, field: str | None = None, oip: bool = False, **extra: Any) -> dict[str, Any]:
    if oip:  # OIP v2: "error" is the message string
        return {"error": message, "status": status, "field": field}
    return {"error": {"status": status, "field": field, "message": message, **extra}}


def error_response(
    status: int,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    oip: bool = False,
    **extra: Any,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, field, oip, **extra), status_code=status, headers=headers)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


def problem_response(problem: Problem, oip: bool) -> Response:
    if isinstance(problem, Cancelled):  # nobody reads it; the status is for the metrics
        return Response(status_code=CLIENT_CLOSED)
    headers = {"WWW-Authenticate": "Bearer"} if isinstance(problem, Unauthorized) else {}
    if isinstance(problem, ReadOnly):  # RFC 9110 §15.5.6: a 405 lists what the resource allows
        headers["Allow"] = ", ".join(problem.allow)
    if problem.retry_after_s is not None:
        headers["Retry-After"] = retry_after(problem.retry_after_s)
    return error_response(status_of(problem, oip), problem.message, problem.field, headers=headers or None, oip=oip)


def chipsim_problem(exc: Exception) -> Problem:
    """A chipsim error that reached the edge without the domain translating it."""
    if isinstance(exc, ChipNotFoundError):
        return NotFound("chip_id", str(exc))
    if isinstance(exc, (ChipExistsError, ChipCorruptError)):
        return Conflict("chip_id", str(exc))
    if isinstance(exc, FleetError):
        return fleet_problem(exc)
    if isinstance(exc, ProfileError):
        return InvalidField(f"profile.{exc.field}" if exc.field else "profile", str(exc))
    return invalid_value(exc, default_field="model")  # CompileError


def validation_error_response(errors: list[dict[str, Any]], oip: bool) -> JSONResponse:
    """FastAPI's request validation errors: the first field at fault, every error in ``details``."""
    status = OIP_STATUS[InvalidField] if oip else STATUS[InvalidField]
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = loc_to_field(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        field = "body"
    message = validation_message(first)
    same = [validation_message(e) for e in errors[1:] if loc_to_field(e.get("loc", ())) == field]
    if same:  # a union: every alternative failed
        message = " or ".join(dict.fromkeys([message, *same]))
    text = f"{field}: {message}" if field else message
    if oip:
        return error_response(status, text, field, oip=True)
    details = [
        {
            "field": "body" if e.get("type") == "json_invalid" else loc_to_field(e.get("loc", ())),
            "message": validation_message(e),
        }
        for e in errors[:20]
    ]
    return error_response(status, text, field, details=details)


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        return problem_response(exc, is_oip(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(list(exc.errors()), is_oip(request.url.path))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(
            exc.status_code, message, None, headers=getattr(exc, "headers", None), oip=is_oip(request.url.path)
        )

    for chipsim_error in (ChipNotFoundError, ChipExistsError, ChipCorruptError, ProfileError, CompileError, FleetError):

        @app.exception_handler(chipsim_error)
        async def _chipsim(request: Request, exc: Exception) -> JSONResponse:
            return problem_response(chipsim_problem(exc), is_oip(request.url.path))

    @app.exception_handler(ClientDisconnect)
    async def _client_gone(request: Request, exc: ClientDisconnect) -> Response:
        log.info("client left during %s %s", request.method, request.url.path)
        return Response(status_code=CLIENT_CLOSED)

    @app.exception_handler(OSError)
    async def _os_error(request: Request, exc: OSError) -> Response:
        # The domain translates store failures; this catches one that slipped through.
        if exc.errno in STORAGE_FULL_ERRNOS:
            log.warning("storage full on %s %s: %s", request.method, request.url.path, exc)
            return problem_response(storage_problem(exc, "cannot write"), is_oip(request.url.path))
        return await _unexpected(request, exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error (logged on the server)", None, oip=is_oip(request.url.path))
