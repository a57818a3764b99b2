"""Int8 digits of tile weights (bench.int8_digits) and the graphs that multiply by them (#14 §2)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.int8_digits import int8_digits, int8_graph, reconstruct
from bench.int8_products import digit_bound, k_needed
from chipsim.ort_session import cpu_session


def _weights(rows: int = 96, cols: int = 24, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols))


def test_known_digits_are_recovered():
    # w = m·(Q1 + Q2/254 + Q3/254²) with hand-picked digits; row 0 fixes the column's m = 1.27/127
    m = 0.01
    w = np.array([[1.27], [m * (5 + 17 / 254 - 100 / 254**2)], [m * (-127 + 0 / 254 + 1 / 254**2)]])
    digits, scale = int8_digits(w, 3)
    assert scale == pytest.approx([m], rel=1e-15)
    assert digits[:, :, 0].T.tolist() == [[127, 0, 0], [5, 17, -100], [-127, 0, 1]]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_error_within_half_a_last_digit(k):
    w = _weights()
    digits, m = int8_digits(w, k)
    assert digits.shape == (k, *w.shape) and np.abs(digits.astype(int)).max() <= 127
    err = np.abs(reconstruct(digits, m) - w)
    half_step = 0.5 * m / 254 ** (k - 1)
    assert (err <= half_step * (1 + 1e-9)).all()
    # and the bound is nearly reached (uniform remainders over 2304 entries): a looser scheme fails
    assert err.max() > 0.9 * half_step.min()


def test_dropping_a_digit_breaks_the_bound():
    w = _weights()
    digits, m = int8_digits(w, 3)
    bound3 = (0.5 * m / 254**2).max()
    assert np.abs(reconstruct(digits, m) - w).max() <= bound3
    assert np.abs(reconstruct(digits[:2], m) - w).max() > 100 * bound3  # the third digit carries ~254×


def test_zero_column_and_bad_k():
    digits, m = int8_digits(np.zeros((4, 2)), 2)
    assert (digits == 0).all() and (m == 1).all()
    with pytest.raises(ValueError, match="k must be"):
        int8_digits(np.ones((2, 2)), 0)


@pytest.mark.parametrize(("form", "cast"), [("fused", False), ("pattern", False), ("wide", False), ("fused", True)])
def test_graph_matches_the_float64_product(form, cast):
    w = _weights(rows=70, cols=12, seed=1)
    codes = np.random.default_rng(2).integers(-127, 128, (9, 70))
    x = codes / 127  # the DAC output: exact as uint8 code + 127
    ref = x @ w
    _, m = int8_digits(w, 3)
    # digits' error (half a last digit per weight) + float32 rounding of the combination
    limit = np.abs(x).sum(axis=1, keepdims=True) * 0.5 * m / 254**2 + 1e-6 * np.abs(x) @ np.abs(w)
    feed = (codes + 127).astype(np.float32 if cast else np.uint8)
    y3 = cpu_session(int8_graph(w, 3, form, cast), 1).run(None, {"x": feed})[0]
    assert (np.abs(y3 - ref) <= limit).all()
    y2 = cpu_session(int8_graph(w, 2, form, cast), 1).run(None, {"x": feed})[0]
    assert np.abs(y2 - ref).max() > 10 * limit.max()  # two digits are visibly coarser: the test has power


def test_digit_bound_of_a_flat_column():
    # all |w| equal: max = mean, so the bound is ½/(127·254^(k−1)) exactly
    w = np.where(np.arange(8)[:, None] % 2 == 0, 0.3, -0.3) * np.ones((8, 3))
    assert digit_bound(w, 2) == pytest.approx(0.5 / (127 * 254))
    assert digit_bound(w, 3) == pytest.approx(0.5 / (127 * 254**2))
    assert k_needed(w) == 3  # 1.55e-5 > 1e-5: two digits never suffice (max|w| ≥ mean|w|)
