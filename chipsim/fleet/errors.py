"""The fleet domain's errors. Each names the request field at fault (``field``), so the HTTP edge
can turn it into a 4xx with a JSON message; none of them is an HTTP status itself."""

from __future__ import annotations


class FleetError(ValueError):
    """A fleet request cannot be carried out; ``field`` names the culprit (e.g. ``"n_chips"``)."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field

    def __reduce__(self):  # keep ``field`` when a worker process or Ray sends the error back
        return type(self), (str(self.args[0]), self.field)


class FleetNotFoundError(FleetError, KeyError):
    """No published fleet of that id (HTTP 404)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class FleetExistsError(FleetError):
    """The fleet id, or one of its chip ids, is taken or being programmed (HTTP 409)."""


class FleetCorruptError(FleetError):
    """A fleet manifest is unreadable or altered, or a chip no longer matches the digest the
    fleet recorded for it (HTTP 409: listed, never evaluated)."""


class FleetCancelled(FleetError):
    """The caller cancelled programming or evaluation; nothing was published."""
