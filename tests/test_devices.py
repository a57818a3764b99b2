"""Device formulas against DESIGN §3.2, checked independently.

Every expected number here is either a reference value printed in DESIGN §3.2 (themselves
rounded from Joshi et al. 2020) or the DESIGN formula re-typed by hand with ``math`` in this
file, never a value produced by chipsim. The torch-vs-numpy test checks that one formula
function gives the same numbers on both array libraries (the chip and HWA training share it).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from chipsim.devices import DEVICES, DeviceModel, PCMDevice, ReRAMDevice, get_device

G_MAX = 25.0  # µS, DESIGN §3.1
HOUR, DAY, YEAR = 3600.0, 86400.0, 365 * 86400.0


# ---------------------------------------------------------------- hand-written DESIGN formulas
def ref_sigma_prog(g: float) -> float:
    return 0.26348 + 1.9650 * g - 1.1731 * g * g


def ref_nu_stats(g: float) -> tuple[float, float]:
    lg = math.log(max(g, 1e-7))
    mu = min(max(-0.0155 * lg + 0.0244, 0.049), 0.1)
    sd = min(max(-0.0125 * lg - 0.0059, 0.008), 0.045)
    return mu, sd


def ref_drift(nu: float, t: float) -> float:
    return ((t + 20.0) / 20.0) ** (-nu)


def ref_read_rel(g_prog: float, t: float) -> float:
    q = min(0.0088 / max(g_prog**0.65, 1e-3), 0.2)
    return q * math.sqrt(math.log((t + 20.0 + 250e-9) / (2 * 250e-9)))


@pytest.fixture(scope="module")
def pcm() -> PCMDevice:
    return PCMDevice()


# ---------------------------------------------------------------- published constants
def test_pcm_constants(pcm):
    assert pcm.g_max_us == G_MAX
    assert pcm.t0_s == 20.0
    assert pcm.t_read_s == 250e-9


@pytest.mark.parametrize("g, expected_percent", [(0.0, 1.05), (0.25, 2.73), (1.0, 4.22)])
def test_prog_noise_reference_values(pcm, g, expected_percent):
    # DESIGN prints σ_prog/g_max rounded to 0.01 %: allow half a unit of the last digit.
    sigma = float(pcm.prog_noise_std_us(np.array([g * G_MAX]))[0])
    assert abs(100 * sigma / G_MAX - expected_percent) <= 0.005 + 1e-9


def test_prog_noise_polynomial_on_a_grid(pcm):
    g = np.linspace(0, 1, 101)
    got = pcm.prog_noise_std_us(g * G_MAX)
    want = np.array([ref_sigma_prog(v) for v in g])
    np.testing.assert_allclose(got, want, rtol=1e-12)
    # The "off" device (target 0) is programmed with 0.263 µS of noise too, not 0.
    assert float(pcm.prog_noise_std_us(np.array([0.0]))[0]) == pytest.approx(0.26348, rel=1e-12)


def test_nu_mean_reference_values(pcm):
    # μ_ν = 0.1 for g ≤ 0.0076 (the clip's upper bound, exactly) ...
    low = np.array([0.0, 1e-9, 1e-7, 1e-4, 0.001, 0.005, 0.0076]) * G_MAX
    mu, _ = pcm.drift_nu_stats(low)
    np.testing.assert_array_equal(mu, 0.1)
    # ... and 0.049 for g ≥ 0.2. At g = 0.2 the unclipped line gives 0.04935, which DESIGN
    # rounds to 0.049: allow half a unit of its last digit (5e-4); above 0.205 the clip is exact.
    mu, _ = pcm.drift_nu_stats(np.array([0.2]) * G_MAX)
    assert abs(float(mu[0]) - 0.049) <= 5e-4
    high = np.array([0.21, 0.25, 0.5, 0.75, 1.0]) * G_MAX
    mu, _ = pcm.drift_nu_stats(high)
    np.testing.assert_array_equal(mu, 0.049)
    # Strictly decreasing in between.
    mid = np.linspace(0.008, 0.2, 50) * G_MAX
    mu, _ = pcm.drift_nu_stats(mid)
    assert np.all(np.diff(mu) < 0)


def test_nu_stats_formula_on_a_grid(pcm):
    g = np.concatenate([[0.0], np.logspace(-8, 0, 200)])
    mu, sd = pcm.drift_nu_stats(g * G_MAX)
    ref = np.array([ref_nu_stats(v) for v in g])
    np.testing.assert_allclose(mu, ref[:, 0], rtol=1e-12)
    np.testing.assert_allclose(sd, ref[:, 1], rtol=1e-12)
    # σ_ν clips: 0.045 for tiny g, 0.008 at g = 1.
    assert float(sd[0]) == 0.045 and float(sd[-1]) == 0.008


@pytest.mark.parametrize("age, expected", [(HOUR, 0.775), (DAY, 0.664), (YEAR, 0.497)])
def test_drift_factor_reference_values(pcm, age, expected):
    # DESIGN prints 3 decimals: allow half a unit of the last digit.
    f = float(pcm.drift_factor(np.array([0.049]), age)[0])
    assert abs(f - expected) <= 5e-4 + 1e-12


def test_drift_factor_formula(pcm):
    nu = np.array([0.0, 0.01, 0.049, 0.1, 0.2])
    for age in [0.0, 1.0, 20.0, HOUR, DAY, YEAR, 10 * YEAR]:
        want = [ref_drift(v, age) for v in nu]
        np.testing.assert_allclose(pcm.drift_factor(nu, age), want, rtol=1e-12)
    # Age 0 is the programming-time read: no drift at all, exactly.
    np.testing.assert_array_equal(pcm.drift_factor(nu, 0.0), 1.0)
    # At t = t0 the factor is 2^−ν (a unit check of t0 = 20 s).
    np.testing.assert_allclose(pcm.drift_factor(nu, 20.0), 2.0 ** (-nu), rtol=1e-12)


def test_read_noise_formula(pcm):
    g = np.array([0.0, 1e-6, 1e-4, 0.005, 0.0082, 0.01, 0.1, 0.25, 0.5, 1.0])
    for age in [0.0, 1.0, HOUR, DAY, YEAR]:
        want = [ref_read_rel(v, age) for v in g]
        np.testing.assert_allclose(pcm.read_noise_rel_std(g * G_MAX, age), want, rtol=1e-12)
    # Spot values worked by hand: g = 1 at age 0: Q_s = 0.0088, ln((20 + 2.5e-7)/5e-7) = ln(4e7)
    # = 17.5045 → σ_read = 0.0088·4.1838 = 0.036818.
    assert float(pcm.read_noise_rel_std(np.array([G_MAX]), 0.0)[0]) == pytest.approx(0.036818, rel=1e-4)
    # Q_s saturates at 0.2 for small conductances (0.0088/g^0.65 ≥ 0.2 for g ≤ 0.0082).
    q = pcm.read_noise_rel_std(np.array([0.0, 0.001 * G_MAX]), 0.0) / math.sqrt(math.log(4e7))
    np.testing.assert_allclose(q, 0.2, rtol=1e-6)


def test_read_noise_grows_with_age(pcm):
    ages = [0.0, 1.0, HOUR, DAY, YEAR, 10 * YEAR]
    s = [float(pcm.read_noise_rel_std(np.array([10.0]), a)[0]) for a in ages]
    assert all(b > a for a, b in zip(s, s[1:]))


# ---------------------------------------------------------------- torch and numpy agree
def test_torch_numpy_agree(pcm):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(7)
    g_t = np.concatenate([[0.0, G_MAX], rng.uniform(0, G_MAX, 998)])
    nu = np.abs(rng.normal(0.06, 0.03, 1000))
    for dtype, tdtype, rtol in [(np.float64, torch.float64, 1e-12), (np.float32, torch.float32, 2e-6)]:
        gn = g_t.astype(dtype)
        gt = torch.from_numpy(gn.copy())
        assert gt.dtype == tdtype
        nn, nt = nu.astype(dtype), torch.from_numpy(nu.astype(dtype))
        pairs = [
            (pcm.prog_noise_std_us(gn), pcm.prog_noise_std_us(gt)),
            (pcm.drift_nu_stats(gn)[0], pcm.drift_nu_stats(gt)[0]),
            (pcm.drift_nu_stats(gn)[1], pcm.drift_nu_stats(gt)[1]),
            (pcm.drift_factor(nn, DAY), pcm.drift_factor(nt, DAY)),
            (pcm.read_noise_rel_std(gn, YEAR), pcm.read_noise_rel_std(gt, YEAR)),
        ]
        for a, b in pairs:
            assert isinstance(b, torch.Tensor), "a torch input must give a torch output"
            np.testing.assert_allclose(b.numpy(), a, rtol=rtol, atol=1e-12)


# ---------------------------------------------------------------- pluggable devices
def test_presets_implement_the_protocol():
    assert {"pcm", "reram"} <= set(DEVICES)
    for name in DEVICES:
        dev = get_device(name)
        assert isinstance(dev, DeviceModel)
        assert dev.name == name
        d = dev.describe()
        assert d["source"] and d["g_max_us"] == dev.g_max_us
    with pytest.raises(KeyError, match="flash"):
        get_device("flash")


def test_reram_is_state_independent_with_negligible_drift():
    dev = ReRAMDevice()
    g = np.linspace(0, dev.g_max_us, 11)
    s = dev.prog_noise_std_us(g)
    assert np.ptp(s) == 0 and s[0] > 0
    mu, sd = dev.drift_nu_stats(g)
    assert np.ptp(mu) == 0 and np.ptp(sd) == 0
    # "Negligible": < 2 % conductance loss after 10 years at the mean ν (PCM loses ~55 %).
    assert float(dev.drift_factor(np.array([float(mu[0])]), 10 * YEAR)[0]) > 0.98
    assert float(PCMDevice().drift_factor(np.array([0.049]), 10 * YEAR)[0]) < 0.5
    r = dev.read_noise_rel_std(g, DAY)
    assert np.ptp(r) == 0 and 0 < r[0] < 0.05
