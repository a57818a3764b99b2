"""Programming and read-out statistics against the DESIGN §3.2–3.5 formulas.

Each statistical test samples ~1e6 devices through chipsim (``sample_devices``, ``program``,
``read``) and compares with the formula re-typed here (or a closed form derived from it). The
tolerances are written next to each assertion from the sample size N:

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

from chipsim import LayerSpec, ProfileError, drift_metrics, get_profile, program, read
from chipsim import faults as fl
from chipsim.profiles import PRESETS, ChipProfile, profile_from_dict
from chipsim.programming import sample_devices
from chipsim.readout import MAX_AGE_S, check_age, conductances_at

G_MAX = 25.0
HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0


# ---------------------------------------------------------------- closed forms (independent)
def sigma_prog(g):
    return 0.26348 + 1.9650 * g - 1.1731 * g * g


def nu_stats(g: float) -> tuple[float, float]:
    lg = math.log(max(g, 1e-7))
    return min(max(-0.0155 * lg + 0.0244, 0.049), 0.1), min(max(-0.0125 * lg - 0.0059, 0.008), 0.045)


def Phi(x):
    return 0.5 * (1.0 + np.vectorize(math.erf)(np.asarray(x, dtype=np.float64) / math.sqrt(2.0)))


def phi(x):
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def folded_normal(mu: float, sd: float) -> tuple[float, float]:
    """Mean and std of |X|, X ~ N(mu, sd²) (ν = |μ_ν + σ_ν·ξ|)."""
    m = sd * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sd * sd)) + mu * (1 - 2 * float(Phi(-mu / sd)))
    return m, math.sqrt(mu * mu + sd * sd - m * m)


def mean_drift_factor(mu: float, sd: float, age: float) -> float:
    """E[((t+t0)/t0)^−ν] for ν = |N(μ, σ²)|, by quadrature over the normal density (the fold
    matters for the off device, μ/σ ≈ 2.2). A 40001-point grid over ±10σ is exact to ~1e-10."""
    L = math.log((age + 20.0) / 20.0)
    x = np.linspace(mu - 10 * sd, mu + 10 * sd, 40001)
    dens = phi((x - mu) / sd) / sd
    return float(np.trapezoid(np.exp(-np.abs(x) * L) * dens, x))


def lognormal_drift_factor(mu: float, sd: float, age: float) -> float:
    """E[exp(−νL)] = exp(−μL + σ²L²/2) when the fold is negligible (μ/σ ≥ 6)."""
    L = math.log((age + 20.0) / 20.0)
    return math.exp(-mu * L + 0.5 * sd * sd * L * L)


def read_rel_std(g_prog: float, age: float) -> float:
    q = min(0.0088 / max(g_prog**0.65, 1e-3), 0.2)
    return q * math.sqrt(math.log((age + 20.0 + 250e-9) / 500e-9))


def clipped_normal_matrix(shape, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.standard_normal(shape), -2.5, 2.5).astype(np.float32)


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


# ---------------------------------------------------------------- whole-matrix behaviour
@pytest.mark.parametrize("age", [0.0, HOUR, 10 * YEAR])
def test_ideal_profile_is_exact_at_every_age(age):
    w = clipped_normal_matrix((700, 300), seed=2)  # two tiles
    chip = program([LayerSpec("fc", w)], get_profile("ideal"), seed=3)
    r = read(chip, age, read_seed=4)
    lr = r.layers[0]
    w_back = lr.w_norm.astype(np.float64) * chip.layers[0].col_scale
    np.testing.assert_allclose(w_back, w, rtol=1e-6, atol=0)
    for mode in ("global", "column", "exact"):
        np.testing.assert_array_equal(lr.alpha(mode), 1.0)
    m = drift_metrics(chip, age, readout=r)
    assert m["weight_error"] < 1e-6 and m["weight_error_gdc"] < 1e-6
    assert m["stuck_reset"] == m["stuck_set"] == 0


def _expected_prog_only_error(w: np.ndarray) -> float:
    """E‖W_prog − W‖/‖W‖ from the DESIGN formulas, given the matrix (closed form per weight).

    Per weight with normalised target g = |w|/s and σ = σ_prog(g): the active device's
    deviation is X = σ·max(c, ξ), c = −25g/σ (clipping at 0 µS), and the off device's is
    Y = max(0, σ0·ξ'). E[X] = σ(cΦ(c) + φ(c)), E[X²] = σ²(c²Φ(c) + cφ(c) + 1 − Φ(c)),
    E[Y] = σ0/sqrt(2π), E[Y²] = σ0²/2, and the weight error is s·(X − Y)/25 (sign aside)."""
    w = w.astype(np.float64)
    s = np.abs(w).max(axis=0)
    g = np.abs(w) / s
    sig = sigma_prog(g)
    c = -G_MAX * g / sig
    big_phi, small_phi = Phi(c), phi(c)
    ex = sig * (c * big_phi + small_phi)
    ex2 = sig**2 * (c * c * big_phi + c * small_phi + 1 - big_phi)
    s0 = 0.26348
    ey, ey2 = s0 / math.sqrt(2 * math.pi), s0 * s0 / 2
    e2 = (ex2 - 2 * ex * ey + ey2) / G_MAX**2 * s**2
    return math.sqrt(e2.sum() / (w**2).sum())


def test_prog_noise_only_error_of_a_gaussian_matrix():
    w = clipped_normal_matrix((512, 512), seed=61)
    prof = get_profile("pcm-reference", drift_scale=0.0, read_noise_scale=0.0)
    chip = program([LayerSpec("fc", w)], prof, seed=62)
    err = drift_metrics(chip, 0.0)["weight_error"]
    expected = _expected_prog_only_error(w)  # ≈ 0.0776
    # The "near 0.08" is one significant figure: accept ±0.005.
    assert abs(err - 0.08) < 0.005
    # Tighter, against the closed form for this very matrix: the error is a sum over 262k weights
    # of terms with coefficient of variation ≈ 1.5, so its relative SE ≈ 1.5/sqrt(262144)/2 ≈ 0.15 %;
    # float16 storage of the deviation adds < 0.05 %. Allow 1 %.
    assert err == pytest.approx(expected, rel=0.01)


def test_drift_with_gdc_grows_slowly_and_stays_far_below_uncompensated():
    w = clipped_normal_matrix((512, 512), seed=71)
    chip = program([LayerSpec("fc", w)], get_profile("pcm-reference"), seed=72)
    ages = [HOUR, DAY, YEAR, 10 * YEAR]
    raw, comp = [], []
    for age in ages:
        m = drift_metrics(chip, age, read_seed=5)
        raw.append(m["weight_error"])
        comp.append(m["weight_error_gdc"])
    # Measured (seed 72): raw 0.25 0.35 0.51 0.56, GDC 0.11 0.13 0.17 0.18. Estimates over 262k
    # weights fluctuate by < 0.002 between seeds, far below the margins used here.
    assert all(b > a for a, b in zip(comp, comp[1:])), comp  # grows ...
    assert comp[-1] - comp[0] < 0.25 * (raw[-1] - raw[0]), (comp, raw)  # ... slowly
    assert comp[-1] < 0.25
    for a, r, c in zip(ages, raw, comp):
        assert c < r
        if a >= DAY:
            assert c < 0.5 * r, (a, r, c)  # far below the uncompensated error


# ---------------------------------------------------------------- drift metrics
def test_drift_metrics_of_a_unit_matrix():
    rng = np.random.default_rng(81)
    w = np.where(rng.random((1024, 512)) < 0.5, -1.0, 1.0).astype(np.float32)
    prof = get_profile("pcm-reference", prog_noise_scale=0.0, read_noise_scale=0.0)
    chip = program([LayerSpec("fc", w)], prof, seed=82)
    m = drift_metrics(chip, DAY, gdc="exact")
    lay = m["layers"][0]
    assert lay["tiles"] == 2 and len(lay["alpha_per_tile"]) == 2
    f = lognormal_drift_factor(0.049, 0.008, DAY)
    # Every active device at g = 1, off devices at G = 0: ΣG(t)/ΣG_prog = mean drift factor
    # (SE 2e-5 relative over 5e5 devices; allow 1e-3 incl. float16 ν).
    assert m["g_ratio"] == pytest.approx(f, rel=1e-3)
    # Exact GDC: α = mean|w|/mean|w(t)| = 1/mean f per tile (2.6e5 devices per tile: SE 3e-5).
    for a in lay["alpha_per_tile"]:
        assert a == pytest.approx(1 / f, rel=1e-3)
    # Raw error: |1 − f| per weight → sqrt(E[(1−f)²]) ≈ 1 − f; with GDC the residual is the spread
    # of f around its mean: sqrt(Var f)/E f ≈ σ_ν·L = 0.008·8.37 = 0.067.
    assert m["weight_error"] == pytest.approx(1 - f, rel=0.01)
    assert m["weight_error_gdc"] == pytest.approx(0.008 * math.log((DAY + 20) / 20), rel=0.03)
    # Mean ν over healthy devices: half at g = 1 (|N(0.049, 0.008²)|), half off (|N(0.1, 0.045²)|);
    # SE of each half's mean ≤ 0.045/sqrt(262144) = 9e-5; allow 0.5 %.
    want_nu = 0.5 * (folded_normal(0.049, 0.008)[0] + folded_normal(0.1, 0.045)[0])
    assert m["mean_nu"] == pytest.approx(want_nu, rel=0.005)
    assert m["stuck_reset"] == m["stuck_set"] == 0 and m["stuck_fraction"] == 0


# ---------------------------------------------------------------- reproducibility
def _state_arrays(chip):
    out = []
    for layer in chip.layers:
        out += [layer.dg_us, layer.nu, layer.gdc_baseline, layer.gdc_baseline_col, layer.gdc_baseline_exact]
    return out


def _readout_arrays(r):
    out = []
    for lr in r.layers:
        out += [lr.w_norm, lr.alpha_global, lr.alpha_column, lr.alpha_exact]
    return out


@pytest.fixture(scope="module")
def two_layers():
    return [
        LayerSpec("a", clipped_normal_matrix((600, 200), 1), input_range=2.0),
        LayerSpec("b", clipped_normal_matrix((200, 50), 2), bias=np.arange(50, dtype=np.float32)),
    ]


def test_same_seeds_give_identical_state_and_readouts(two_layers):
    prof = get_profile("pcm-faulty")
    c1 = program(two_layers, prof, seed=9)
    c2 = program(two_layers, prof, seed=9)
    for a, b in zip(_state_arrays(c1), _state_arrays(c2)):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_readout_arrays(read(c1, DAY, 3)), _readout_arrays(read(c2, DAY, 3))):
        np.testing.assert_array_equal(a, b)


def test_different_seeds_differ(two_layers):
    prof = get_profile("pcm-faulty")
    c1, c2 = program(two_layers, prof, seed=9), program(two_layers, prof, seed=10)
    for name in ("dg_us", "nu", "gdc_baseline_col"):
        assert not np.array_equal(getattr(c1.layers[0], name), getattr(c2.layers[0], name)), name
    assert not np.array_equal(fl.decode_faults(c1.layers[0].nu), fl.decode_faults(c2.layers[0].nu))
    r1, r2 = read(c1, DAY, 3), read(c1, DAY, 4)
    assert not np.array_equal(r1.layers[0].w_norm, r2.layers[0].w_norm)
    # Layers have their own streams: the two layers' deviations are not the same draws.
    assert not np.array_equal(c1.layers[0].dg_us[:, :200, :50], c1.layers[1].dg_us)


def test_read_seeds_differ_only_by_read_noise(two_layers):
    # No 1/f noise: every read seed gives the same weights (drift is deterministic given ν).
    prof = get_profile("pcm-faulty", read_noise_scale=0.0)
    chip = program(two_layers, prof, seed=9)
    r1, r2 = read(chip, YEAR, 1), read(chip, YEAR, 2)
    for a, b in zip(r1.layers, r2.layers):
        np.testing.assert_array_equal(a.w_norm, b.w_norm)
        np.testing.assert_array_equal(a.alpha_exact, b.alpha_exact)
    # The GDC identity read also sees the periphery noise; without it the α's agree too.
    quiet = get_profile("pcm-faulty", read_noise_scale=0.0, w_noise=0.0, out_noise=0.0)
    chip = program(two_layers, quiet, seed=9)
    for a, b in zip(_readout_arrays(read(chip, YEAR, 1)), _readout_arrays(read(chip, YEAR, 2))):
        np.testing.assert_array_equal(a, b)
    # With 1/f noise on, two read seeds differ, and by exactly the read-noise amount: the noise-free
    # drifted weights are common, the difference has std sqrt(2)·σ_read·|w(t)| per device pair.
    prof = get_profile("pcm-reference", prog_noise_scale=0.0)
    w = np.ones((500, 400), np.float32)
    chip = program([LayerSpec("fc", w)], prof, seed=9)
    a, b = (read(chip, DAY, s).layers[0].w_norm.astype(np.float64) for s in (1, 2))
    clean = conductances_at(chip.layers[0], prof, DAY, None)
    w_clean = (clean[0] - clean[1]).astype(np.float64) / G_MAX
    rel = (a - b) / w_clean
    # 2e5 pairs: SE of the std 0.16 %; allow 1.5 %.
    assert rel.std() == pytest.approx(math.sqrt(2) * read_rel_std(1.0, DAY), rel=0.015)


def test_read_noise_is_drawn_anew_at_every_age():
    """The 1/f draw ξ of a read-out is keyed by (chip, read seed, layer, age) (DESIGN §3.3): two ages
    of one read seed are independent read-outs, one age read twice is the same read-out."""
    prof = get_profile("pcm-reference", prog_noise_scale=0.0)
    chip = program([LayerSpec("fc", np.ones((500, 400), np.float32))], prof, seed=9)

    def xi(age: float, read_seed: int) -> np.ndarray:
        # w = 1: G+ at g_max (g_prog = 1), G- off (0 µS, so no 1/f noise): w(t) = w_drift·(1 + σ_read·ξ).
        clean = conductances_at(chip.layers[0], prof, age, None)
        w_clean = (clean[0] - clean[1]).astype(np.float64) / G_MAX
        w = read(chip, age, read_seed).layers[0].w_norm.astype(np.float64)
        return ((w - w_clean) / (w_clean * read_rel_std(1.0, age))).ravel()

    hour, day = xi(HOUR, 3), xi(DAY, 3)
    # 2e5 devices: ξ's std within SE 0.16 % of 1 (2 % allowed), and the correlation of two independent
    # draws is ~N(0, 1/2e5), SE 0.0022: 0.02 is 9 SE. One draw rescaled per age gives exactly 1.
    assert hour.std() == pytest.approx(1, rel=0.02) and day.std() == pytest.approx(1, rel=0.02)
    assert abs(np.corrcoef(hour, day)[0, 1]) < 0.02
    assert abs(np.corrcoef(day, xi(DAY, 4))[0, 1]) < 0.02  # read seeds stay independent too
    np.testing.assert_array_equal(read(chip, DAY, 3).layers[0].w_norm, read(chip, DAY, 3).layers[0].w_norm)
    # drift_metrics re-draws the read-out's conductances from the same key: G- = 0 and G+_prog = g_max,
    # so ΣG(t)/ΣG_prog is the mean read weight. Another draw would move it by ~σ_read/sqrt(2e5) ≈ 1e-4.
    w_day = read(chip, DAY, 3).layers[0].w_norm.astype(np.float64)
    assert drift_metrics(chip, DAY, read_seed=3)["layers"][0]["g_ratio"] == pytest.approx(w_day.mean(), rel=1e-6)


def test_read_is_pure(two_layers):
    chip = program(two_layers, get_profile("pcm"), seed=5)
    before = [a.copy() for a in _state_arrays(chip)]
    r1 = read(chip, HOUR, 1)
    read(chip, 10 * YEAR, 2)
    read(chip, 0.0, 1)
    r1b = read(chip, HOUR, 1)
    for a, b in zip(_readout_arrays(r1), _readout_arrays(r1b)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before, _state_arrays(chip)):
        np.testing.assert_array_equal(a, b)


def test_layers_do_not_depend_on_each_other(two_layers):
    prof = get_profile("pcm-faulty")
    both = program(two_layers, prof, seed=9)
    first = program(two_layers[:1], prof, seed=9)
    for a, b in zip(_state_arrays(first), _state_arrays(both)[:5]):
        np.testing.assert_array_equal(a, b)


def test_streams_are_independent():
    """Changing one class's strength leaves the other classes' draws unchanged (DESIGN §3.5)."""
    w = clipped_normal_matrix((300, 300), 4)
    base = program([LayerSpec("fc", w)], get_profile("pcm-faulty"), seed=7).layers[0]
    other = program([LayerSpec("fc", w)], get_profile("pcm-faulty", prog_noise_scale=0.5), seed=7).layers[0]
    np.testing.assert_array_equal(base.nu, other.nu)  # ν and faults unchanged
    assert not np.array_equal(base.dg_us, other.dg_us)


# ---------------------------------------------------------------- validation
@pytest.fixture(scope="module")
def small_chip():
    return program([LayerSpec("fc", clipped_normal_matrix((64, 32), 5))], get_profile("pcm"), seed=1)


@pytest.mark.parametrize("age", [0, 0.0, 1e-9, 1, HOUR, 100 * YEAR, MAX_AGE_S, np.float32(5.0)])
def test_valid_ages(small_chip, age):
    r = read(small_chip, age, 0)
    assert r.age_s == float(age)
    assert np.all(np.isfinite(r.layers[0].w_norm))


@pytest.mark.parametrize(
    "age", [-1.0, -1e-12, float("nan"), float("inf"), float("-inf"), "abc", None, MAX_AGE_S * 1.01]
)
def test_invalid_ages_are_errors(small_chip, age):
    with pytest.raises(ValueError, match="age"):
        read(small_chip, age, 0)
    with pytest.raises(ValueError, match="age"):
        check_age(age)


@pytest.mark.parametrize("seed", [-1, 2**63, 1.5, "1", None, True])
def test_invalid_seeds_are_errors(small_chip, seed):
    with pytest.raises(ValueError, match="read_seed"):
        read(small_chip, 1.0, seed)
    with pytest.raises(ValueError, match="seed"):
        program([LayerSpec("fc", np.ones((4, 4), np.float32))], get_profile("pcm"), seed=seed)


def test_named_profiles_exist_and_differ():
    assert {"ideal", "pcm", "pcm-faulty"} <= set(PRESETS)
    ideal, pcm, faulty = get_profile("ideal"), get_profile("pcm"), get_profile("pcm-faulty")
    assert isinstance(pcm, ChipProfile) and pcm.name == "pcm" and pcm.device == "pcm"
    for f in (
        "prog_noise_scale",
        "drift_scale",
        "read_noise_scale",
        "w_noise",
        "ir_drop",
        "out_noise",
        "p_stuck_reset",
        "p_stuck_set",
        "d2d_sigma",
    ):
        assert getattr(ideal, f) == 0, f
    assert faulty.p_stuck_reset > pcm.p_stuck_reset > 0 and faulty.p_stuck_set > pcm.p_stuck_set > 0
    assert pcm.w_noise == 0.0175 and pcm.out_noise == 0.04 and pcm.out_levels == 254 and pcm.out_bound == 10
    # Profiles are immutable.
    with pytest.raises(Exception):
        pcm.drift_scale = 2.0  # type: ignore[misc]
    # Round trip through the JSON form stored in manifests.
    assert profile_from_dict(faulty.model_dump(mode="json")) == faulty


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(bogus=1), "bogus"),
        (dict(prog_noise_scale=-1.0), "prog_noise_scale"),
        (dict(drift_scale=1e9), "drift_scale"),
        (dict(p_stuck_set=1.5), "p_stuck_set"),
        (dict(tile_rows=0), "tile_rows"),
        (dict(gdc="sometimes"), "gdc"),
        (dict(out_levels="many"), "out_levels"),
        (dict(w_noise=float("nan")), "w_noise"),
    ],
)
def test_profile_errors_name_the_field(overrides, field):
    with pytest.raises(ProfileError) as info:
        get_profile("pcm", **overrides)
    assert info.value.field == field
    assert field in str(info.value)


def test_profile_errors_of_cross_field_rules_name_the_fields():
    with pytest.raises(ProfileError) as info:
        get_profile("pcm", device="flash")
    assert "device" in str(info.value) and "flash" in str(info.value)
    with pytest.raises(ProfileError) as info:
        get_profile("pcm", p_stuck_reset=0.7, p_stuck_set=0.7)
    assert "p_stuck_reset" in str(info.value) and "p_stuck_set" in str(info.value)
    with pytest.raises(ProfileError) as info:
        get_profile("no-such-preset")
    assert info.value.field == "name" and "no-such-preset" in str(info.value)
    with pytest.raises(ProfileError) as info:
        profile_from_dict({"device": "pcm", "extra": 1})
    assert info.value.field == "extra"


def test_profile_error_field_of_unknown_device():
    with pytest.raises(ProfileError) as info:
        get_profile("pcm", device="flash")
    assert info.value.field == "device"


def test_layer_age_offset_shifts_only_that_layer():
    """A layer carried into a derived chip with ``age_offset_s`` reads as that much older;
    the other layers are unaffected (independent check: the drift law on the same devices)."""
    import copy

    from chipsim.readout import read

    rng = np.random.default_rng(0)
    specs = [
        LayerSpec("a", rng.standard_normal((16, 8)).astype(np.float32)),
        LayerSpec("b", rng.standard_normal((16, 8)).astype(np.float32)),
    ]
    profile = get_profile("pcm", read_noise_scale=0.0)
    chip = program(specs, profile, seed=1)
    older = copy.deepcopy(chip)
    older.layers[0].meta["age_offset_s"] = 86400.0
    base = read(chip, 86400.0)
    shifted = read(older, 0.0)
    np.testing.assert_array_equal(shifted.layers[0].w_norm, base.layers[0].w_norm)
    np.testing.assert_array_equal(shifted.layers[1].w_norm, read(chip, 0.0).layers[1].w_norm)
