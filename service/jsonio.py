"""JSON out: compact bytes, and arrays as nested lists with ``null`` for non-finite values."""

from __future__ import annotations

import json
from typing import Any

import numpy as np


def dumps(content: Any) -> bytes:
    """Compact JSON; raises ``ValueError`` on NaN or infinity (JSON has neither)."""
    return json.dumps(content, separators=(",", ":"), allow_nan=False).encode()


def finite_list(arr: np.ndarray) -> list[Any]:
    """A nested list of an array; non-finite values become null (JSON has no NaN)."""
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        obj = arr.astype(object)
        obj[~np.isfinite(arr)] = None
        return obj.tolist()
    return arr.tolist()
