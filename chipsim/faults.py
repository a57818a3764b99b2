"""Stuck-at faults (DESIGN §3.3, class 4).

Each device is independently stuck at 0 µS (RESET) with ``p_stuck_reset`` or at ``g_max``
(SET) with ``p_stuck_set``; sampled once at programming. Stuck devices ignore the programmed
target and do not drift. In the stored state a fault is encoded in the sign of the device's
drift exponent (ν ≥ 0 for healthy devices), so faults cost no extra bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

HEALTHY, STUCK_RESET, STUCK_SET = 0, 1, 2
NU_CODE = {STUCK_RESET: -1.0, STUCK_SET: -2.0}


def stuck_masks(u: Any, p_reset: float, p_set: float) -> tuple[Any, Any]:
    """(stuck RESET, stuck SET) masks from one uniform [0, 1) draw per device: RESET where
    ``u < p_reset``, SET where ``p_reset ≤ u < p_reset + p_set``. Array function (numpy or torch),
    shared with HWA training's drop-connect."""
    return u < p_reset, (u >= p_reset) & (u < p_reset + p_set)


def sample_faults(shape: tuple[int, ...], p_reset: float, p_set: float, rng: np.random.Generator) -> np.ndarray:
    """Fault code per device (int8: 0 healthy, 1 stuck RESET, 2 stuck SET)."""
    codes = np.zeros(shape, dtype=np.int8)
    if p_reset <= 0 and p_set <= 0:
        return codes
    # float32 uniforms resolve probabilities down to 2^-24 ≈ 6e-8, far below any fault rate
    # of interest, at half the cost of float64 (programming is timed per weight).
    u = rng.random(shape, dtype=np.float32)
    reset, stuck_set = stuck_masks(u, p_reset, p_set)
    codes[reset] = STUCK_RESET
    codes[stuck_set] = STUCK_SET
    return codes


def encode_nu(nu: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """ν with fault codes folded into negative values."""
    out = nu.copy()
    out[codes == STUCK_RESET] = NU_CODE[STUCK_RESET]
    out[codes == STUCK_SET] = NU_CODE[STUCK_SET]
    return out


def decode_faults(nu_coded: np.ndarray) -> np.ndarray:
    """Fault code per device from stored ν."""
    codes = np.zeros(nu_coded.shape, dtype=np.int8)
    codes[nu_coded == NU_CODE[STUCK_RESET]] = STUCK_RESET
    codes[nu_coded == NU_CODE[STUCK_SET]] = STUCK_SET
    return codes
