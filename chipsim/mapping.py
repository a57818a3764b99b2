"""Weights ↔ conductances (DESIGN §3.1).

A layer is a matrix ``W`` of shape (rows = inputs, cols = outputs). Each column is normalised
by its digital scale ``s_col = max|W[:, col]|`` so normalised weights lie in [−1, 1]; each
normalised weight is a differential pair ``G+ = g_max·max(w, 0)``, ``G− = g_max·max(−w, 0)``.
The rows are split evenly into tiles of at most ``tile_rows``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from chipsim.xp import clip_min, namespace


def column_scales(weight: Any) -> Any:
    """``s_col = max|W[:, col]|``; an all-zero column gets 1 so nothing divides by 0.
    Array function (numpy: float32; torch: the tensor's dtype), shared with HWA training."""
    xp = namespace(weight)
    if xp is np:
        weight = np.asarray(weight, dtype=np.float32)
    s = xp.amax(xp.abs(weight), axis=0)
    return xp.where(s > 0, s, xp.ones_like(s))


def normalise(weight: np.ndarray, col_scale: np.ndarray) -> np.ndarray:
    """Normalised weights ``W / s_col`` in [−1, 1] (float32)."""
    return (weight.astype(np.float32) / col_scale).astype(np.float32)


def pair_targets_us(w_norm: Any, g_max_us: float) -> Any:
    """Target conductances (µS) of the differential pair, stacked: ``[G+, G−]`` (2, rows, cols).
    Array function (numpy or torch), shared with HWA training."""
    xp = namespace(w_norm)
    return xp.stack([clip_min(w_norm, 0) * g_max_us, clip_min(-w_norm, 0) * g_max_us])


def pair_weight(g_pair_us: np.ndarray, g_max_us: float) -> np.ndarray:
    """Effective normalised weight ``(G+ − G−)/g_max`` of a stacked pair."""
    return ((g_pair_us[0] - g_pair_us[1]) / np.float32(g_max_us)).astype(np.float32)


def tile_bounds(n_rows: int, tile_rows: int) -> list[tuple[int, int]]:
    """Row ranges of ``ceil(n/tile_rows)`` tiles of (almost) equal size: 1000 rows, 512 max →
    two tiles of 500, not 512 + 488 (even splits balance IR drop and ADC ranges)."""
    if n_rows < 1:
        raise ValueError("a layer needs at least one input row")
    n_tiles = -(-n_rows // tile_rows)
    base, extra = divmod(n_rows, n_tiles)
    sizes = [base + (1 if i < extra else 0) for i in range(n_tiles)]
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
