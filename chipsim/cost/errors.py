"""The domain error of the cost estimate."""

from __future__ import annotations


class CostError(ValueError):
    """A cost estimate cannot be made as asked; ``field`` names the culprit (``batch``,
    ``inputs.<name>``, ``cost_model``, ``chip``)."""

    def __init__(self, message: str, field: str = "chip"):
        super().__init__(message)
        self.field = field
