"""Seeded, independent random streams (DESIGN §3.5).

Every random quantity comes from its own stream keyed by (seed, stream, keys…), so changing,
say, the read seed never changes programming, and layers are independent of each other.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

MAX_SEED = 2**63 - 1


class Stream(IntEnum):
    PROG = 1  # programming noise
    NU = 2  # drift exponents
    FAULTS = 3  # stuck-at faults
    D2D = 4  # device-to-device gain
    GDC_BASELINE = 5  # periphery noise of the GDC reference read at programming
    READ = 6  # 1/f noise and GDC read at an age
    MVM = 7  # per-MVM noise at inference


def check_seed(seed: int, field: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"{field}: must be an integer in [0, 2^63-1], got {seed!r}")
    return int(seed)


def stream(seed: int, kind: Stream, *keys: int) -> np.random.Generator:
    """The generator of one stream. ``keys`` are further non-negative integers (layer index…)."""
    return np.random.default_rng([check_seed(seed), int(kind), *(int(k) for k in keys)])
