"""What can go wrong with a request, in domain terms: no status codes, no HTTP.

The registry, served chips, data sets, the zoo and jobs raise these; :mod:`service.errors` is
the one place that turns them into status codes and bodies, for the native API and for the
Open Inference Protocol (as KServe's ``errors.py`` does). Every problem names the request
``field`` at fault (dotted, e.g. ``inputs.x``, ``profile.drift_scale``) or ``None``, and its
message starts with that field.
"""

from __future__ import annotations

import re
from typing import Any


class Problem(Exception):
    """A request the service cannot serve; ``field`` names the culprit."""

    def __init__(self, field: str | None, message: str):
        super().__init__(message)
        self.field, self.message = field, message


class InvalidField(Problem):
    """A field's value is malformed or out of range."""


class NotFound(Problem):
    """The named chip, job or model version does not exist."""


class Conflict(Problem):
    """The request clashes with the state: an id taken, a chip corrupt, the store full, a job finished."""


class Unauthorized(Problem):
    """No API key, or a wrong one."""


class UnsupportedMediaType(Problem):
    """The body is in a format the route does not read."""


class Unavailable(Problem):
    """The service cannot take the work now (it is shutting down)."""


def invalid_value(err: Exception, default_field: str | None = None) -> InvalidField:
    """chipsim's ``ValueError("field: message")`` (or one with a ``field`` attribute) → InvalidField."""
    msg = str(err)
    field = getattr(err, "field", None)
    if field is None:
        head, sep, _ = msg.partition(": ")
        if sep and head and " " not in head and len(head) < 80:
            field = head
    return InvalidField(field or default_field, msg)


# ----------------------------------------------------------------------------------- pydantic errors
#: pydantic puts the member of a union that failed into the location ("gdc.bool"); not a field.
_UNION_TAG = re.compile(r"(bool|int|float|str|bytes|list|dict|none|constrained-\w+|(literal|list|dict|tuple|"
                        r"function-\w+)\[.*\])")


def loc_to_field(loc: tuple | list) -> str | None:
    """A pydantic error location → the dotted request field (``None`` when it is no field)."""
    parts = [str(p) for p in loc]
    where = None
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        where, parts = parts[0], parts[1:]
    parts = [p for p in parts if not _UNION_TAG.fullmatch(p)]
    return ".".join(parts) or (where if where == "body" else None)


def validation_message(err: dict[str, Any]) -> str:
    """The message of one pydantic error, in the service's words where pydantic's are obscure."""
    msg = str(err.get("msg", "invalid value"))
    if err.get("type") == "json_invalid":
        ctx = err.get("ctx") or {}
        return f"request body is not valid JSON ({ctx.get('error', 'decode error')})"
    if err.get("type") == "missing":
        return "field required"
    if tuple(err.get("loc", ())) == ("body",) and err.get("type") in ("model_attributes_type", "dict_type"):
        return "expected a JSON object (send it with Content-Type: application/json)"
    return msg


def invalid_request(err: Any) -> InvalidField:
    """A pydantic ``ValidationError`` → an InvalidField naming the first field at fault; the
    alternatives of a union that all failed are joined into one message."""
    errors = list(err.errors())
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    field = loc_to_field(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        field = "body"
    message = validation_message(first)
    same = [validation_message(e) for e in errors[1:]
            if loc_to_field(e.get("loc", ())) == loc_to_field(first.get("loc", ()))]
    if same:
        message = " or ".join(dict.fromkeys([message, *same]))
    if first.get("type") == "model_type" and not first.get("loc"):
        message = "expected a JSON object"
    return InvalidField(field or "body", f"{field}: {message}" if field else message)
