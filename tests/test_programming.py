"""Programming and read-out statistics against the DESIGN §3.2–3.5 formulas: programming noise,
the drift exponent ν, drift through program/read, and stuck-at faults (whole matrices, seeds and
validation are in test_programming_matrix and test_programming_validation).

Each statistical test samples ~1e6 devices through chipsim (``sample_devices``, ``program``,
``read``) and compares with the formula re-typed here or in tests/programming_formulas.py (or a closed
form derived from it). The tolerances are written next to each assertion from the sample size N:

- standard error of a mean: σ/sqrt(N);
- standard error of a standard deviation: ≈ σ/sqrt(2N) (normal data);
- standard error of a proportion: sqrt(p(1−p)/N).

We allow 5–10 standard errors: with fixed seeds the tests are deterministic, and the margin
keeps them valid for any seed while a real formula error (typically ≥ 5 % off) still fails.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from chipsim import LayerSpec, drift_metrics, get_profile, program, read
from chipsim import faults as fl
from chipsim.programming import sample_devices
from chipsim.readout import conductances_at
from tests.programming_formulas import (
    DAY,
    G_MAX,
    HOUR,
    YEAR,
    clipped_normal_matrix,
    folded_normal,
    lognormal_drift_factor,
    phi,
    read_rel_std,
    sigma_prog,
)


def nu_stats(g: float) -> tuple[float, float]:
    lg = math.log(max(g, 1e-7))
    return min(max(-0.0155 * lg + 0.0244, 0.049), 0.1), min(max(-0.0125 * lg - 0.0059, 0.008), 0.045)


def mean_drift_factor(mu: float, sd: float, age: float) -> float:
    """E[((t+t0)/t0)^−ν] for ν = |N(μ, σ²)|, by quadrature over the normal density (the fold
    matters for the off device, μ/σ ≈ 2.2). A 40001-point grid over ±10σ is exact to ~1e-10."""
    L = math.log((age + 20.0) / 20.0)
    x = np.linspace(mu - 10 * sd, mu + 10 * sd, 40001)
    dens = phi((x - mu) / sd) / sd
    return float(np.trapezoid(np.exp(-np.abs(x) * L) * dens, x))


def levels_targets(levels, per_level):
    """Device targets (µS) laid out as (2, rows, cols) with ``per_level`` devices per level."""
    g = np.repeat(np.asarray(levels, dtype=np.float32) * np.float32(G_MAX), per_level)
    return g.reshape(2, -1, 1000), g


# ---------------------------------------------------------------- programming noise
def test_prog_noise_std_at_several_levels():
    levels = [0.1, 0.25, 0.5, 1.0]  # clipping at 0 is ≥ 5.6σ away at all of them
    n = 250_000
    targets, flat = levels_targets(levels, n)
    g_prog, _ = sample_devices(targets, get_profile("pcm-reference"), seed=11, layer_index=0)
    dev = (g_prog.reshape(-1).astype(np.float64) - flat).reshape(len(levels), n)
    for k, g in enumerate(levels):
        s = sigma_prog(g)
        # std: SE = σ/sqrt(2N) = 0.14 % of σ for N = 250k; 1 % is 7 SE.
        assert dev[k].std() == pytest.approx(s, rel=0.01), f"σ_prog at g={g}"
        # mean 0: SE = σ/sqrt(N) = 0.2 % of σ; allow 1 % of σ (5 SE).
        assert abs(dev[k].mean()) < 0.01 * s, f"bias at g={g}"


def test_prog_noise_of_the_off_device_is_clipped_half_normal():
    n = 500_000
    targets, _ = levels_targets([0.0], n)
    g_prog, _ = sample_devices(targets, get_profile("pcm-reference"), seed=12, layer_index=0)
    g = g_prog.reshape(-1).astype(np.float64)
    s0 = 0.26348
    assert g.min() == 0.0
    # P(G = 0) = 1/2; SE = sqrt(0.25/N) = 7e-4, allow 5e-3 (7 SE).
    assert np.mean(g == 0) == pytest.approx(0.5, abs=5e-3)
    # E[max(0, σ0ξ)] = σ0/sqrt(2π) = 0.1051 µS; SE = σ0·sqrt(1/2 − 1/2π)/sqrt(N) = 0.22 % of the
    # mean; allow 1.5 % (7 SE).
    assert g.mean() == pytest.approx(s0 / math.sqrt(2 * math.pi), rel=0.015)


def test_prog_noise_scale_multiplies_sigma():
    n = 250_000
    targets, flat = levels_targets([0.5, 0.5], n)
    g_prog, _ = sample_devices(targets, get_profile("pcm-reference", prog_noise_scale=2.0), seed=13, layer_index=0)
    dev = g_prog.reshape(-1).astype(np.float64) - flat
    # N = 500k: SE of the std 0.1 %, allow 1 %.
    assert dev.std() == pytest.approx(2 * sigma_prog(0.5), rel=0.01)


def test_d2d_gain_variation():
    n = 500_000
    sd = 0.05
    targets, flat = levels_targets([1.0, 1.0], n)
    prof = get_profile("pcm-reference", prog_noise_scale=0.0, d2d_sigma=sd)
    g_prog, _ = sample_devices(targets, prof, seed=14, layer_index=0)
    gain = g_prog.reshape(-1).astype(np.float64) / flat
    # G = G_target·(1 + σ_d2d·ξ): std of the gain σ_d2d, SE = σ/sqrt(2N) = 0.07 % (N = 1e6); allow 1 %.
    assert gain.std() == pytest.approx(sd, rel=0.01)
    # mean 1: SE = σ/sqrt(N) = 5e-5; allow 5e-4.
    assert gain.mean() == pytest.approx(1.0, abs=5e-4)
    # Off: exact targets (no programming noise, no gain).
    g0, _ = sample_devices(targets, get_profile("pcm-reference", prog_noise_scale=0.0), seed=14, layer_index=0)
    np.testing.assert_array_equal(g0, targets)


# ---------------------------------------------------------------- drift exponent ν
@pytest.mark.parametrize("seed", [21])
def test_nu_distribution_from_the_target(seed):
    levels = [0.0, 0.001, 0.01, 0.1, 0.25, 1.0]
    n = 200_000
    targets, _ = levels_targets(levels, n)
    _, nu = sample_devices(targets, get_profile("pcm-reference"), seed=seed, layer_index=0)
    nu = nu.reshape(len(levels), n).astype(np.float64)
    assert nu.min() >= 0
    for k, g in enumerate(levels):
        mu, sd = nu_stats(g)
        m, s = folded_normal(mu, sd)
        # mean: SE = s/sqrt(N) ≤ 0.1 % of m (N = 200k); allow 0.5 %.
        assert nu[k].mean() == pytest.approx(m, rel=0.005), f"mean ν at g={g}"
        # std: SE ≈ s/sqrt(2N) = 0.16 %; allow 1 % (6 SE).
        assert nu[k].std() == pytest.approx(s, rel=0.01), f"std ν at g={g}"
    # The fold is visible where μ/σ is small: at g ≤ 0.0076, μ=0.1, σ=0.045 → E|X| > μ.
    assert nu[0].mean() > 0.1


def test_nu_is_drawn_from_the_target_not_the_programmed_value():
    # Same targets, different programming noise: ν identical (own stream, own inputs).
    targets, _ = levels_targets([0.05, 0.5], 50_000)
    _, nu1 = sample_devices(targets, get_profile("pcm-reference", prog_noise_scale=0.5), seed=3, layer_index=0)
    _, nu2 = sample_devices(targets, get_profile("pcm-reference", prog_noise_scale=3.0), seed=3, layer_index=0)
    np.testing.assert_array_equal(nu1, nu2)


def test_drift_scale_multiplies_nu():
    targets, _ = levels_targets([1.0], 200_000)
    _, nu1 = sample_devices(targets, get_profile("pcm-reference"), seed=5, layer_index=0)
    _, nu2 = sample_devices(targets, get_profile("pcm-reference", drift_scale=2.0), seed=5, layer_index=0)
    np.testing.assert_allclose(nu2, 2 * nu1, rtol=1e-6)
    _, nu0 = sample_devices(targets, get_profile("pcm-reference", drift_scale=0.0), seed=5, layer_index=0)
    np.testing.assert_array_equal(nu0, 0)


# ---------------------------------------------------------------- drift through program/read
@pytest.fixture(scope="module")
def unit_chip():
    """1000×1000 weights ±1 (|w| = 1 → every active device at g = 1), no programming noise:
    1e6 active devices with ν ~ N(0.049, 0.008²) and 1e6 off devices (target 0, G_prog = 0)."""
    rng = np.random.default_rng(31)
    w = np.where(rng.random((1000, 1000)) < 0.5, -1.0, 1.0).astype(np.float32)
    prof = get_profile("pcm-reference", prog_noise_scale=0.0)
    return program([LayerSpec("fc", w)], prof, seed=32)


@pytest.mark.parametrize("age, design_value", [(HOUR, 0.775), (DAY, 0.664), (YEAR, 0.497)])
def test_mean_drift_factor(unit_chip, age, design_value):
    layer = unit_chip.layers[0]
    prof = unit_chip.profile
    g_prog = layer.g_prog_us(G_MAX).astype(np.float64)
    g_t = conductances_at(layer, prof, age, None).astype(np.float64)
    active = g_prog > 0
    assert active.sum() == 1_000_000  # one device of each pair; programming noise is off
    f = g_t[active] / g_prog[active]
    want = lognormal_drift_factor(0.049, 0.008, age)
    # Per-device std of f ≈ f·σ_ν·L (≤ 0.057 at 1 y): SE of the mean ≤ 1.2e-4 relative for N = 1e6.
    # ν is stored in float16 (rounding ≤ 1.5e-5 → ≤ 2e-4 relative in f, unbiased). Allow 1e-3.
    assert f.mean() == pytest.approx(want, rel=1e-3)
    # And near the DESIGN value for ν = 0.049 exactly (σ_ν adds exp(σ²L²/2) ≤ +0.7 %).
    assert f.mean() == pytest.approx(design_value, rel=0.01)
    # drift_metrics' conductance ratio is the same quantity here (all active G equal, G_off = 0).
    m = drift_metrics(unit_chip, age, read_seed=0)
    # (G(t) includes the zero-mean 1/f noise, σ_read ≈ 0.04 → SE 4e-5 over 1e6 devices.)
    assert prof.read_noise_scale == 1.0
    assert m["g_ratio"] == pytest.approx(want, rel=1e-3)


def test_mean_drift_factor_of_programmed_off_devices():
    """Off devices (target 0) with programming noise: G_prog = max(0, 0.263ξ), ν ~ |N(0.1, 0.045²)|.
    ν and G_prog come from independent streams, so the ratio over devices with G_prog > 0 averages
    E[((t+t0)/t0)^−|ν|] with the fold."""
    w = np.ones((1000, 1000), np.float32)  # every G− is an off device
    chip = program([LayerSpec("fc", w)], get_profile("pcm-reference"), seed=33)
    layer = chip.layers[0]
    g_prog = layer.g_prog_us(G_MAX)[1].astype(np.float64)
    g_t = conductances_at(layer, chip.profile, DAY, None)[1].astype(np.float64)
    on = g_prog > 0
    f = g_t[on] / g_prog[on]
    # ~5e5 devices; per-device std of f ≈ f·σL = 0.38·f at 1 d → SE 0.054 %; allow 0.5 %.
    assert f.mean() == pytest.approx(mean_drift_factor(0.1, 0.045, DAY), rel=0.005)


def test_read_noise_std_through_read():
    """σ_read relative to |G_drift| at g = 1 and g = 0.25, 1 day, drift off, no programming noise."""
    rng = np.random.default_rng(41)
    sign = np.where(rng.random((1000, 1000)) < 0.5, -1.0, 1.0)
    w = np.empty((1000, 1000), np.float32)
    w[0] = 1.0  # sets every column scale to 1
    w[1:500] = sign[1:500]
    w[500:] = 0.25 * sign[500:]
    prof = get_profile("pcm-reference", prog_noise_scale=0.0, drift_scale=0.0)
    chip = program([LayerSpec("fc", w)], prof, seed=42)
    wt = read(chip, DAY, read_seed=7).layers[0].w_norm.astype(np.float64)
    for rows, g in [(slice(1, 500), 1.0), (slice(500, 1000), 0.25)]:
        rel = (wt[rows] - w[rows]) / w[rows]
        s = read_rel_std(g, DAY)
        # N ≈ 5e5 per level: SE of the std 0.1 %; allow 1 % (10 SE). Clipping at 0 is ≥ 9σ away.
        assert rel.std() == pytest.approx(s, rel=0.01), f"σ_read at g={g}"
        assert abs(rel.mean()) < 0.01 * s
    # read_noise_scale multiplies σ_read.
    chip2 = program(
        [LayerSpec("fc", w)],
        get_profile("pcm-reference", prog_noise_scale=0.0, drift_scale=0.0, read_noise_scale=0.5),
        seed=42,
    )
    wt2 = read(chip2, DAY, read_seed=7).layers[0].w_norm.astype(np.float64)
    rel2 = (wt2[1:500] - w[1:500]) / w[1:500]
    assert rel2.std() == pytest.approx(0.5 * read_rel_std(1.0, DAY), rel=0.01)


# ---------------------------------------------------------------- stuck-at faults
@pytest.fixture(scope="module")
def faulty_chip():
    w = np.ones((1000, 1000), np.float32)  # G+ at g_max, G− off
    prof = get_profile("pcm-faulty", prog_noise_scale=0.0, read_noise_scale=0.0)
    return program([LayerSpec("fc", w)], prof, seed=51)


def test_stuck_at_rates(faulty_chip):
    prof = faulty_chip.profile
    assert (prof.p_stuck_reset, prof.p_stuck_set) == (0.02, 0.005)
    n = faulty_chip.n_devices  # 2e6
    m = drift_metrics(faulty_chip, 0.0)
    for key, p in [("stuck_reset", prof.p_stuck_reset), ("stuck_set", prof.p_stuck_set)]:
        se = math.sqrt(n * p * (1 - p))  # binomial count SE: 198 (RESET), 100 (SET)
        assert abs(m[key] - n * p) < 5 * se, key
    codes = fl.decode_faults(faulty_chip.layers[0].nu)
    assert m["stuck_reset"] == int(np.sum(codes == fl.STUCK_RESET))
    # Independent of the device's role: G+ and G− fault rates agree (each 1e6, SE 140 → 5 SE).
    for code, p in [(fl.STUCK_RESET, 0.02), (fl.STUCK_SET, 0.005)]:
        counts = [(codes[k] == code).sum() for k in (0, 1)]
        assert abs(counts[0] - counts[1]) < 5 * math.sqrt(2 * 1e6 * p)


def test_stuck_devices_ignore_the_target_and_do_not_drift(faulty_chip):
    layer = faulty_chip.layers[0]
    prof = faulty_chip.profile
    codes = fl.decode_faults(layer.nu)
    g_prog = layer.g_prog_us(G_MAX)
    assert np.all(g_prog[codes == fl.STUCK_RESET] == 0)
    # G_prog is stored as a float16 deviation from the target: ≤ 2^-7 µS from g_max when |dG| ≤ 25.
    assert np.allclose(g_prog[codes == fl.STUCK_SET], G_MAX, atol=2**-7)
    g_10y = conductances_at(layer, prof, 10 * YEAR, None)
    stuck = codes != fl.HEALTHY
    np.testing.assert_array_equal(g_10y[stuck], g_prog[stuck])
    healthy_on = (codes == fl.HEALTHY) & (g_prog > 0)
    assert np.all(g_10y[healthy_on] < g_prog[healthy_on])  # the others did drift
    # Through read(): a pair whose G+ is stuck SET and whose G− is healthy (off, exactly 0 without
    # programming noise) keeps the weight 1 exactly at 10 years.
    w = read(faulty_chip, 10 * YEAR, read_seed=1).layers[0].w_norm
    pair = (codes[0] == fl.STUCK_SET) & (codes[1] == fl.HEALTHY)
    assert pair.sum() > 4000
    np.testing.assert_array_equal(w[pair], 1.0)
    healthy = (codes[0] == fl.HEALTHY) & (codes[1] == fl.HEALTHY)
    assert np.all(w[healthy] < 1.0)
    # ~9.5e5 healthy pairs: mean = E[f] at 10 y (per-device std ≈ f·σL = 0.13·f → SE 0.014 %); allow 0.5 %.
    assert w[healthy].mean() == pytest.approx(lognormal_drift_factor(0.049, 0.008, 10 * YEAR), rel=0.005)


def test_no_faults_when_probabilities_are_zero():
    chip = program([LayerSpec("fc", clipped_normal_matrix((300, 300)))], get_profile("pcm-reference"), seed=1)
    m = drift_metrics(chip, 0.0)
    assert m["stuck_reset"] == m["stuck_set"] == 0
    assert np.all(chip.layers[0].nu >= 0)
