"""Fast float16 conversion (onnxruntime's Cast) against numpy's, bit for bit."""

from __future__ import annotations

import numpy as np

from chipsim import half


def test_every_float16_widens_to_numpys_float32():
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)
    h = h[~np.isnan(h)]  # NaN payloads may differ; the chip stores no NaN
    assert h.size >= half.MIN_ELEMENTS  # through the session, not numpy's fallback
    np.testing.assert_array_equal(half.to_float32(h).view(np.uint32), h.astype(np.float32).view(np.uint32))


def test_float32_rounds_to_numpys_float16_on_random_bit_patterns_and_edges():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    x = bits.view(np.float32)
    edges = np.array(
        [0.0, -0.0, np.inf, -np.inf, 65504.0, 65519.99, 65520.0, 6.1035156e-05, 5.96e-8, 2.9802322e-08, 1e-45],
        np.float32,
    )
    # values the chip stores: deviations of ~0.3 µS, ν of ~0.05, codes -1 and -2, subnormal halves
    x = np.concatenate([x[~np.isnan(x)], edges, rng.standard_normal(1 << 16).astype(np.float32) * 1e-5])
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    np.testing.assert_array_equal(half.to_float16(x).view(np.uint16), want.view(np.uint16))
    assert half.to_float16(x.reshape(-1, 1)).shape == (x.size, 1)


def test_small_arrays_keep_their_shape_and_values():
    x = np.array([[0.1, -2.0]], np.float32)
    np.testing.assert_array_equal(half.to_float16(x), x.astype(np.float16))
    np.testing.assert_array_equal(half.to_float32(x.astype(np.float16)), x.astype(np.float16).astype(np.float32))
