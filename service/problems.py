"""What can go wrong with a request, in domain terms: no status codes, no HTTP.

The registry, served chips, data sets, the zoo and jobs raise these; :mod:`service.errors` is
the one place that turns them into status codes and bodies, for the native API and for the
Open Inference Protocol (as KServe's ``errors.py`` does). Every problem names the request
``field`` at fault (dotted, e.g. ``inputs.x``, ``profile.drift_scale``) or ``None``, and its
message starts with that field.
"""

from __future__ import annotations

import errno
import os
import re
from typing import Any

from chipsim.fleet.errors import FleetCorruptError, FleetError, FleetExistsError, FleetNotFoundError


class Problem(Exception):
    """A request the service cannot serve; ``field`` names the culprit. ``retry_after_s``: when
    the same request may succeed later, after about how many seconds (a ``Retry-After``)."""

    def __init__(self, field: str | None, message: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.field, self.message, self.retry_after_s = field, message, retry_after_s


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


class ReadOnly(Problem):
    """A mutation sent to a read-only replica (AGEDCHIP_READ_ONLY=true). ``allow``: the methods
    the route's resource still serves on this replica (the HTTP edge's ``Allow`` header)."""

    def __init__(self, action: str, allow: tuple[str, ...] = ()):
        super().__init__(
            None,
            f"this service is a read-only replica (AGEDCHIP_READ_ONLY=true): it cannot {action}; "
            "send the request to the writer of the state folder",
        )
        self.allow = allow


class Unavailable(Problem):
    """The service cannot take the work now (it is shutting down, or short of memory or storage)."""


class Overloaded(Problem):
    """A workload's queue is full, or a request waited its longest in it: retry later."""


class StorageFull(Problem):
    """The store cannot be written: disk full, quota exceeded or read-only file system."""


class Cancelled(Problem):
    """The work was stopped before it finished: its client disconnected (or the service is
    stopping, which the HTTP edge reports as :class:`Unavailable`)."""


#: What a stopping service answers, and after how many seconds to retry: a replacement instance
#: (or the restarted one) is usually a second or two away.
SHUTTING_DOWN = "the service is shutting down; retry on another instance or after the restart"
SHUTDOWN_RETRY_S = 1.0
#: Errors of the store's file system that more retries will not cure: the operator must act.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})
_ERRNO_WORDS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system"}


def storage_problem(err: BaseException, action: str) -> Problem:
    """A failed store operation → StorageFull (disk full, quota, read-only) or Unavailable.

    ``err`` is an ``OSError`` or a store error carrying ``errno`` (its cause's, if it chains one);
    ``action`` says what failed ("cannot write the chip"). The message names the cause."""
    code = getattr(err, "errno", None)
    cause = err.__cause__ or err.__context__
    if code is None and cause is not None:
        code = getattr(cause, "errno", None)
    reason = os.strerror(code) if isinstance(code, int) else str(err) or type(err).__name__
    name = errno.errorcode.get(code, "") if isinstance(code, int) else ""
    if code in STORAGE_FULL_ERRNOS:
        return StorageFull(
            None,
            f"store: {action}: {_ERRNO_WORDS[code]} ({name}: {reason}); nothing was changed. "
            "Free space or make AGEDCHIP_STATE_DIR writable, then retry",
        )
    detail = f"{name}: {reason}" if name else reason
    return Unavailable(
        None, f"store: {action}: storage error ({detail}); nothing was changed, retry later", retry_after_s=5.0
    )


def fleet_problem(err: FleetError) -> Problem:
    """chipsim.fleet's errors in the service's terms: unknown fleet → NotFound, an id taken or being
    programmed and a corrupt fleet → Conflict, anything else the request got wrong → InvalidField."""
    field = err.field
    if field is not None and field.startswith("ages_s"):  # the service's request names them `ages`
        field = "ages" + field.removeprefix("ages_s")
    message = str(err).replace("ages_s", "ages") if field is not None and field.startswith("ages") else str(err)
    if isinstance(err, FleetNotFoundError):
        return NotFound(field or "fleet_id", message)
    if isinstance(err, (FleetExistsError, FleetCorruptError)):
        return Conflict(field or "fleet_id", message)
    return InvalidField(field, message)


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
_UNION_TAG = re.compile(
    r"(bool|int|float|str|bytes|list|dict|none|constrained-\w+|(literal|list|dict|tuple|"
    r"function-\w+)\[.*\])"
)


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
    same = [
        validation_message(e)
        for e in errors[1:]
        if loc_to_field(e.get("loc", ())) == loc_to_field(first.get("loc", ()))
    ]
    if same:
        message = " or ".join(dict.fromkeys([message, *same]))
    if first.get("type") == "model_type" and not first.get("loc"):
        message = "expected a JSON object"
    return InvalidField(field or "body", f"{field}: {message}" if field else message)
