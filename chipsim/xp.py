"""Array-namespace helpers so each physics formula is written once and runs on numpy
(the chip) and on torch (hardware-aware training) alike.

Only operations with the same name and semantics in both libraries are used by the formulas
(``log``, ``sqrt``, ``abs``, ``clip``, ``round``, ``where``, ``exp``); torch is never imported
here, so the serving path stays torch-free.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any

import numpy as np


def is_torch(x: Any) -> bool:
    """True for a torch tensor, decided without importing torch."""
    return type(x).__module__.startswith("torch")


def namespace(*arrays: Any) -> ModuleType:
    """The array library of ``arrays``: ``torch`` if any is a tensor, else ``numpy``."""
    for a in arrays:
        if is_torch(a):
            # A tensor exists, so torch is already loaded: look it up, never import it here
            # (the serving path must never load torch itself).
            return sys.modules["torch"]
    return np


def clip_min(x: Any, lo: float) -> Any:
    """``max(x, lo)`` elementwise for a numpy array or torch tensor."""
    xp = namespace(x)
    return xp.clip(x, lo, None)


def clip_max(x: Any, hi: float) -> Any:
    """``min(x, hi)`` elementwise for a numpy array or torch tensor."""
    xp = namespace(x)
    return xp.clip(x, None, hi)
