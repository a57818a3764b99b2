"""One error format for every route (DESIGN §5): ``{"error": {"status", "field", "message"}}``.

``field`` names the request field at fault in dotted form (``inputs.x``, ``profile.drift_scale``,
``age``, ``chip_id``) or is null when no single field is. Under ``/v2`` (Open Inference Protocol)
the body is the protocol's ``{"error": "<message>"}`` with ``status`` and ``field`` beside it, so
Triton and KServe clients can read the message. Bad input is always a 4xx; an
unexpected failure is a 500 with a generic message, and its traceback goes to the log only.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from chipsim import ChipCorruptError, ChipExistsError, ChipNotFoundError, ProfileError
from chipsim.compiler import CompileError

log = logging.getLogger("agedchip.service")


class ApiError(Exception):
    """An error to report to the client: status code, the field at fault and a message."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.field, self.headers = status, message, field, headers

    @classmethod
    def from_value_error(cls, err: Exception, status: int = 422, default_field: str | None = None) -> ApiError:
        """``ValueError("field: message")`` (chipsim's convention) → an ApiError naming the field."""
        msg = str(err)
        field = getattr(err, "field", None)
        if field is None:
            head, sep, _ = msg.partition(": ")
            if sep and head and " " not in head and len(head) < 80:
                field = head
        return cls(status, msg, field or default_field)


def is_oip(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


def error_body(status: int, message: str, field: str | None = None, oip: bool = False, **extra: Any) -> dict[str, Any]:
    if oip:  # OIP v2: "error" is the message string
        return {"error": message, "status": status, "field": field}
    return {"error": {"status": status, "field": field, "message": message, **extra}}


def error_response(status: int, message: str, field: str | None = None, headers: dict[str, str] | None = None,
                   oip: bool = False, **extra: Any) -> JSONResponse:
    return JSONResponse(error_body(status, message, field, oip, **extra), status_code=status, headers=headers)


#: pydantic puts the member of a union that failed into the location ("gdc.bool"); not a field.
_UNION_TAG = re.compile(r"(bool|int|float|str|bytes|list|dict|none|constrained-\w+|(literal|list|dict|tuple|"
                        r"function-\w+)\[.*\])")


def _loc_to_field(loc: tuple | list) -> str | None:
    parts = [str(p) for p in loc]
    where = None
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        where, parts = parts[0], parts[1:]
    parts = [p for p in parts if not _UNION_TAG.fullmatch(p)]
    return ".".join(parts) or (where if where == "body" else None)


def _validation_message(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "json_invalid":
        ctx = err.get("ctx") or {}
        return f"request body is not valid JSON ({ctx.get('error', 'decode error')})"
    if err.get("type") == "missing":
        return "field required"
    if tuple(err.get("loc", ())) == ("body",) and err.get("type") in ("model_attributes_type", "dict_type"):
        return "expected a JSON object (send it with Content-Type: application/json)"
    return msg


def validation_to_api_error(err: Any, status: int = 422, prefix: str = "") -> ApiError:
    """A pydantic ``ValidationError`` → an ApiError naming the first field at fault."""
    errors = list(err.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _loc_to_field(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        field = "body"
    elif prefix:
        field = f"{prefix}.{field}" if field else prefix
    message = _validation_message(first)
    same = [_validation_message(e) for e in errors[1:] if _loc_to_field(e.get("loc", ())) == _loc_to_field(first.get("loc", ()))]
    if same:
        message = " or ".join(dict.fromkeys([message, *same]))
    if first.get("type") == "model_type" and not first.get("loc"):
        message = "expected a JSON object"
    return ApiError(status, f"{field}: {message}" if field else message, field or "body")


def validation_error_response(errors: list[dict[str, Any]], status: int = 422, oip: bool = False) -> JSONResponse:
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = _loc_to_field(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        field = "body"
    message = _validation_message(first)
    same = [_validation_message(e) for e in errors[1:] if _loc_to_field(e.get("loc", ())) == field]
    if same:  # a union: every alternative failed
        message = " or ".join(dict.fromkeys([message, *same]))
    details = [{"field": "body" if e.get("type") == "json_invalid" else _loc_to_field(e.get("loc", ())),
                "message": _validation_message(e)} for e in errors[:20]]
    text = f"{field}: {message}" if field else message
    if oip:
        return error_response(status, text, field, oip=True)
    return error_response(status, text, field, details=details)


def install(app: FastAPI) -> None:
    """Register the handlers on an app."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.field, headers=exc.headers, oip=is_oip(request.url.path))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        oip = is_oip(request.url.path)
        return validation_error_response(list(exc.errors()), 400 if oip else 422, oip)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return error_response(exc.status_code, message, None, headers=getattr(exc, "headers", None),
                              oip=is_oip(request.url.path))

    @app.exception_handler(ChipNotFoundError)
    async def _not_found(request: Request, exc: ChipNotFoundError) -> JSONResponse:
        return error_response(404, str(exc), "chip_id", oip=is_oip(request.url.path))

    @app.exception_handler(ChipExistsError)
    async def _exists(request: Request, exc: ChipExistsError) -> JSONResponse:
        return error_response(409, str(exc), "chip_id", oip=is_oip(request.url.path))

    @app.exception_handler(ChipCorruptError)
    async def _corrupt(request: Request, exc: ChipCorruptError) -> JSONResponse:
        return error_response(409, str(exc), "chip_id", oip=is_oip(request.url.path))

    @app.exception_handler(ProfileError)
    async def _profile(request: Request, exc: ProfileError) -> JSONResponse:
        field = f"profile.{exc.field}" if exc.field else "profile"
        return error_response(422, str(exc), field)

    @app.exception_handler(CompileError)
    async def _compile(request: Request, exc: CompileError) -> JSONResponse:
        e = ApiError.from_value_error(exc, default_field="model")
        return error_response(422, e.message, e.field)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        return error_response(500, "internal server error (logged on the server)", None, oip=is_oip(request.url.path))
