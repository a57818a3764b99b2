"""The error bodies of the API (the native routes' and the Open Inference Protocol's) and the
responses each route declares for them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class FieldError(BaseModel):
    field: str | None = Field(description="The request field at fault, dotted; null if none.")
    message: str = Field(description="What is wrong with it.")


class ErrorDetail(BaseModel):
    status: int = Field(description="HTTP status code (the response's).")
    field: str | None = Field(
        description="The request field at fault, dotted (e.g. 'inputs.x', 'age', "
        "'profile.drift_scale'); null if no single field."
    )
    message: str = Field(description="What is wrong and, where possible, how to fix it; starts with the field.")
    details: list[FieldError] | None = Field(
        None, description="Request validation errors only: every field at fault (at most 20)."
    )


class ErrorResponse(BaseModel):
    """The error body of the native API (every route outside /v2)."""

    error: ErrorDetail = Field(description="What went wrong.")


class OipErrorResponse(BaseModel):
    """The error body under /v2: the Open Inference Protocol requires ``error`` to be the message string."""

    error: str = Field(description="What is wrong (the protocol's error message), starting with the field at fault.")
    status: int = Field(description="HTTP status code (the response's); an agedchip addition.")
    field: str | None = Field(
        description="The request field at fault, dotted (e.g. 'inputs.0.name', "
        "'parameters.age'); null if no single field. An agedchip addition."
    )


#: Error responses of the native routes (the OpenAPI document adds 415 to routes with a body, 500 to all
#: and swaps in :data:`OIP_ERROR_RESPONSES` under /v2: :mod:`service.openapi_doc`).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Malformed Content-Length header.",
        401: "Missing or wrong API key.",
        404: "Unknown chip or route.",
        409: "Conflict: chip id taken, chip corrupt, store full, chip without eval set.",
        413: "Request body larger than the configured limit.",
        422: "Invalid field value (the body names the field).",
        429: "Too many requests of this kind in line; retry after `Retry-After` seconds.",
        503: "Shutting down, memory budget reached, or a storage error; retry after `Retry-After` seconds.",
        507: "The store is full, over quota or read-only; nothing was changed.",
    }.items()
}
#: Error responses under /v2 (Open Inference Protocol): invalid input is 400, the body's ``error`` a string.
OIP_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": OipErrorResponse, "description": text}
    for code, text in {
        400: "Invalid input (the protocol's status for it): tensor name, shape, datatype, data, parameters.",
        401: "Missing or wrong API key.",
        404: "Unknown model (chip) or version.",
        409: "The chip is corrupt.",
        413: "Request body larger than the configured limit.",
    }.items()
}
#: What every route may answer when something unexpected fails (the traceback goes to the log only).
INTERNAL_ERROR = "Unexpected failure; the body says only 'internal server error', the server log has the traceback."
#: What routes that read a body answer for a content type they do not read.
UNSUPPORTED_MEDIA = "Content type not accepted by this route (the body names the ones it reads)."
