"""The periphery (DAC, ADC, per-MVM noise, IR drop) and GDC (tiles and the reference analog MVM
are in test_analog_matmul).

Independent checks: hand-computed grid values, scalar Python loops written from DESIGN §3.3
(not vectorised like the code under test), and analytic drift factors for GDC.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from chipsim import LayerSpec, gdc, get_profile, program, read
from chipsim import periphery as ph
from chipsim.periphery import IR_DROP_G_RATIO, adc, dac, ir_drop_delta, ir_drop_ramp, mvm_noise_std, quantize
from tests.periphery_helpers import COMBINED_NOISE, DAY, HOUR, YEAR


# ---------------------------------------------------------------- DAC / ADC
def test_ir_drop_g_ratio_constant():
    assert IR_DROP_G_RATIO == pytest.approx(1 / 0.35 / 5e-6, rel=1e-15)


def test_dac_quantisation_and_clipping():
    r = 2.0
    x = np.linspace(-3 * r, 3 * r, 100_001)
    xd = dac(x, r, 254)
    # Step 2/254 = 1/127 over [−1, 1]: every output is k/127 with |k| ≤ 127.
    k = xd * 127
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert np.abs(np.round(k)).max() == 127
    assert len(np.unique(np.round(k))) == 255  # 254 steps → 255 values from −1 to 1
    inside = np.abs(x) <= r
    assert np.all(np.abs(xd[inside] - x[inside] / r) <= 0.5 / 127 + 1e-12)
    np.testing.assert_array_equal(xd[x >= r], 1.0)  # clipped to the input range
    np.testing.assert_array_equal(xd[x <= -r], -1.0)
    # Hand values: 0.3 → round(38.1)/127; 1.0 with r = 2 → 0.5 → round(63.5) = 64 (half to even).
    assert float(dac(np.array([0.3]), 1.0, 254)[0]) == pytest.approx(38 / 127, abs=1e-15)
    assert float(dac(np.array([1.0]), 2.0, 254)[0]) == pytest.approx(64 / 127, abs=1e-15)
    assert float(dac(np.array([1.5 / 127]), 1.0, 254)[0]) == pytest.approx(2 / 127, abs=1e-15)
    # levels = 0: an ideal (unquantised) DAC that still clips.
    np.testing.assert_allclose(dac(x, r, 0), np.clip(x, -r, r) / r, rtol=0, atol=1e-15)


def test_adc_quantisation_and_clipping():
    bound, levels = 10.0, 254
    step = 2 * bound / levels  # 0.07874
    y = np.linspace(-30, 30, 200_001)
    yq = adc(y, bound, levels)
    k = yq / step
    np.testing.assert_allclose(k, np.round(k), atol=1e-9)
    assert len(np.unique(np.round(k))) == 255
    assert yq.max() == 10.0 and yq.min() == -10.0
    inside = np.abs(y) <= bound - step / 2
    assert np.all(np.abs(yq[inside] - y[inside]) <= step / 2 + 1e-12)
    np.testing.assert_array_equal(yq[y >= bound], 10.0)
    np.testing.assert_array_equal(yq[y <= -bound], -10.0)
    # Hand value: 1.0 / 0.07874 = 12.7 steps → 13 steps = 1.023622.
    assert float(adc(np.array([1.0]), bound, levels)[0]) == pytest.approx(13 * 20 / 254, abs=1e-12)
    # No quantisation, clipping only; and neither (bound 0 = no clip).
    np.testing.assert_array_equal(adc(y, bound, 0), np.clip(y, -bound, bound))
    np.testing.assert_array_equal(adc(y, 0.0, 0), y)


def test_quantize_rounds_half_to_even():
    step = 2.0 / 4
    x = np.array([0.25, 0.75, -0.25, 1.25])  # exactly half steps: 0.5, 1.5, −0.5, 2.5 steps
    np.testing.assert_array_equal(quantize(x, 4, 1.0), [0.0, 2 * step, 0.0, 2 * step])


# ---------------------------------------------------------------- per-MVM noise, IR drop: loops
def loop_mvm_noise_std(x, w, w_noise):
    b, n = x.shape
    out = np.zeros((b, w.shape[1]))
    for p in range(b):
        for i in range(w.shape[1]):
            out[p, i] = w_noise * math.sqrt(sum(abs(w[j, i]) * x[p, j] ** 2 for j in range(n)))
    return out


def loop_ir_drop_delta(x, w, scale):
    """DESIGN §3.3 written out: a_i = (n/g_ratio)·Σ_j |w_ij|·|x_j|, c_i = a_i(0.05a_i² − 0.2a_i + 0.5),
    x̃_j = x_j(1 − (1 − j/n)²), Δy_i = −scale·c_i·Σ_j w_ij·x̃_j."""
    g_ratio = 1 / 0.35 / 5e-6
    b, n = x.shape
    out = np.zeros((b, w.shape[1]))
    for p in range(b):
        for i in range(w.shape[1]):
            a = (n / g_ratio) * sum(abs(w[j, i]) * abs(x[p, j]) for j in range(n))
            c = a * (0.05 * a * a - 0.2 * a + 0.5)
            s = sum(w[j, i] * x[p, j] * (1 - (1 - j / n) ** 2) for j in range(n))
            out[p, i] = -scale * c * s
    return out


def test_mvm_noise_std_matches_loop():
    rng = np.random.default_rng(1)
    x, w = rng.uniform(-1, 1, (3, 20)), rng.uniform(-1, 1, (20, 4))
    np.testing.assert_allclose(mvm_noise_std(x, w, 0.0175), loop_mvm_noise_std(x, w, 0.0175), rtol=1e-12)


def test_ir_drop_matches_loop():
    rng = np.random.default_rng(2)
    x, w = rng.uniform(-1, 1, (3, 20)), rng.uniform(-1, 1, (20, 4))
    got = ir_drop_delta(x, w, 1.7)
    np.testing.assert_allclose(got, loop_ir_drop_delta(x, w, 1.7), rtol=1e-10)
    assert np.all(got != 0)
    np.testing.assert_allclose(ir_drop_ramp(20, x), [1 - (1 - j / 20) ** 2 for j in range(20)], rtol=1e-15)
    # A large tile with full inputs: the a_i² and a_i³ terms matter (a ≈ 0.1): still the loop.
    x2, w2 = np.ones((1, 512)), rng.uniform(0, 1, (512, 2))
    a_check = (512 / IR_DROP_G_RATIO) * np.abs(w2).sum(axis=0)
    assert a_check.min() > 0.1
    np.testing.assert_allclose(ir_drop_delta(x2, w2, 1.0), loop_ir_drop_delta(x2, w2, 1.0), rtol=1e-10)


def test_ir_drop_depends_on_the_input_position():
    # Same inputs, same weights, different rows: the ramp 1 − (1 − j/n)² grows with j, so inputs
    # on the last rows get the larger correction (position dependence, DESIGN §3.3 class 5).
    w = np.ones((100, 1))
    x_first, x_last = np.zeros((1, 100)), np.zeros((1, 100))
    x_first[0, :10] = 1
    x_last[0, -10:] = 1
    assert abs(ir_drop_delta(x_last, w, 1.0)[0, 0]) > abs(ir_drop_delta(x_first, w, 1.0)[0, 0]) > 0


def test_periphery_torch_numpy_agree():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    x, w = rng.uniform(-2, 2, (5, 40)), rng.uniform(-1, 1, (40, 6))
    tx, tw = torch.from_numpy(x), torch.from_numpy(w)
    np.testing.assert_allclose(dac(tx, 1.5, 254).numpy(), dac(x, 1.5, 254), rtol=0, atol=1e-12)
    np.testing.assert_allclose(adc(tx * 5, 10.0, 254).numpy(), adc(x * 5, 10.0, 254), rtol=0, atol=1e-12)
    np.testing.assert_allclose(mvm_noise_std(tx, tw, 0.02).numpy(), mvm_noise_std(x, w, 0.02), rtol=1e-12)
    np.testing.assert_allclose(ir_drop_delta(tx, tw, 3.0).numpy(), ir_drop_delta(x, w, 3.0), rtol=1e-10)


# ---------------------------------------------------------------- GDC identity read
@pytest.mark.parametrize("out_levels", [0, 254])
def test_identity_read_equals_general_periphery_on_an_identity(out_levels):
    prof = get_profile("pcm-reference", ir_drop=50.0, out_levels=out_levels)
    rng = np.random.default_rng(4)
    n, cols = 300, 40
    w = rng.uniform(-1, 1, (n, cols)).astype(np.float32)
    y_fast = gdc.identity_read(w, prof, np.random.default_rng(99))
    # General periphery on an explicit identity, the same draws in the documented order.
    draws = np.random.default_rng(99)
    x = np.eye(n)
    w64 = w.astype(np.float64)
    y = x @ w64
    y += ir_drop_delta(x, w64, prof.ir_drop)
    if COMBINED_NOISE:
        xi = draws.standard_normal((n, cols), dtype=np.float32)
        y += ph.output_noise_std(x, w64, prof.w_noise, prof.out_noise) * xi
    else:
        xi_w = draws.standard_normal((n, cols), dtype=np.float32)
        xi_o = draws.standard_normal((n, cols), dtype=np.float32)
        y += mvm_noise_std(x, w64, prof.w_noise) * xi_w + prof.out_noise * xi_o
    y_gen = adc(y, prof.out_bound, prof.out_levels)
    if out_levels == 0:
        np.testing.assert_allclose(y_fast, y_gen, rtol=0, atol=1e-5)  # float32 vs float64
    else:
        # float32 vs float64 can move a value across an ADC rounding boundary only if it lies within
        # ~1e-6 of one: expected count 12000·2e-6/0.0787 ≈ 3e-4. Require exact equality elsewhere.
        step = 2 * prof.out_bound / out_levels
        diff = np.abs(y_fast - y_gen)
        assert np.all((diff < 1e-5) | (np.abs(diff - step) < 1e-5))
        assert np.sum(diff > 1e-5) <= 1
    # The draws matter (the IR-drop and noise terms are not negligible).
    assert np.abs(y_fast - adc(w64, prof.out_bound, prof.out_levels)).max() > 0.05


# ---------------------------------------------------------------- GDC modes
def _unit_chip(profile, rows=1024, cols=256, seed=5):
    rng = np.random.default_rng(seed)
    w = np.where(rng.random((rows, cols)) < 0.5, -1.0, 1.0).astype(np.float32)
    return program([LayerSpec("fc", w)], profile, seed=seed)


def test_gdc_ideal_alpha_is_one_exactly():
    chip = _unit_chip(get_profile("ideal"))
    for age in (0.0, DAY, 10 * YEAR):
        lr = read(chip, age, 3).layers[0]
        for mode in ("global", "column", "exact", "off"):
            np.testing.assert_array_equal(lr.alpha(mode), 1.0)


@pytest.mark.parametrize("age", [HOUR, YEAR])
def test_gdc_drift_only_alpha_is_inverse_mean_drift(age):
    prof = get_profile(
        "pcm-reference",
        prog_noise_scale=0.0,
        read_noise_scale=0.0,
        w_noise=0.0,
        out_noise=0.0,
        ir_drop=0.0,
        in_levels=0,
        out_levels=0,
        out_bound=0.0,
    )
    chip = _unit_chip(prof)
    lr = read(chip, age, 3).layers[0]
    L = math.log((age + 20) / 20)
    f = math.exp(-0.049 * L + 0.5 * (0.008 * L) ** 2)  # E[f], ν ~ N(0.049, 0.008²) at g = 1
    # Per tile 512×256 active devices; SE of mean f ≤ σL/sqrt(131072) = 3e-4 relative at 1 y; allow 2e-3.
    assert lr.alpha_global.shape == (2,)
    np.testing.assert_allclose(lr.alpha_global, 1 / f, rtol=2e-3)
    np.testing.assert_allclose(lr.alpha_exact, 1 / f, rtol=2e-3)
    # Per column: 512 devices each → SE ≤ 0.5 %; the column means average to 1/f (allow 0.5 %),
    # and every column is within 4 % (8 SE).
    assert lr.alpha_column.shape == (2, 256)
    assert lr.alpha_column.mean() == pytest.approx(1 / f, rel=5e-3)
    np.testing.assert_allclose(lr.alpha_column, 1 / f, rtol=0.04)
    np.testing.assert_array_equal(lr.alpha("off"), 1.0)
    assert lr.alpha("global").shape == lr.alpha("column").shape == (2, 256)


def test_gdc_with_periphery_noise_is_one_at_age_zero():
    chip = _unit_chip(get_profile("pcm-reference"), rows=512, cols=512)
    lr = read(chip, 0.0, 3).layers[0]
    # Baseline and current reads see the same conductances (plus 1/f noise) and independent
    # periphery noise; over 262k outputs mean|Y| agrees to ~1e-3.
    assert abs(float(lr.alpha_global[0]) - 1) < 0.01
    assert abs(float(lr.alpha_exact[0]) - 1) < 0.01
    with pytest.raises(ValueError, match="gdc"):
        lr.alpha("sometimes")


def test_gdc_ratio_handles_zero_reads():
    np.testing.assert_array_equal(gdc.ratio(np.array([2.0, 3.0]), np.array([1.0, 0.0])), [2.0, 1.0])
