"""Pulsed device model: response presets, F/G split, pulse trains vs the mean-field update."""

from __future__ import annotations

import numpy as np
import pytest

from chipsim.pulsed import (
    ExpStep,
    LinearStep,
    PowStep,
    PulsedDevice,
    SoftBounds,
    asymmetric_part,
    bisect_symmetric_point,
    expected_update,
    pulse_counts,
    pulse_update,
    symmetric_part,
)

# Asymmetric, non-trivial parameters for every preset (w◇ ≠ 0 where the preset allows it).
PRESETS = [
    LinearStep(slope_up=0.5, slope_down=0.3, up_down=0.1),
    SoftBounds(tau_max=1.2, tau_min=0.8, up_down=0.15),
    ExpStep(a_up=0.2, a_down=0.3, gamma_up=1.5, gamma_down=1.0),
    PowStep(tau_max=1.5, tau_min=1.2, gamma_up=2.0, gamma_down=1.3),  # numerical w◇
]


@pytest.mark.parametrize("response", PRESETS, ids=lambda r: type(r).__name__)
def test_symmetric_point_and_fg_decomposition(response):
    w_sym = response.symmetric_point()
    assert -1.0 < w_sym < 1.0 and w_sym != 0.0
    at = np.array([w_sym])
    # q+ = q− at w◇ to 1e-9: the analytic formulas are exact up to rounding, the bisection stops at
    # an interval of 1e-13 and |d(q+ − q−)/dw| < 10 here, so the residual is < 1e-12.
    assert abs(response.q_up(at)[0] - response.q_down(at)[0]) < 1e-9
    assert response.q_up(at)[0] > 0.1  # a real crossing, not both sides clipped to zero
    assert abs(asymmetric_part(response, at)[0]) < 1e-9
    # The analytic point agrees with an independent numerical root of q+ − q−.
    assert abs(bisect_symmetric_point(response, -0.99, 0.99) - w_sym) < 1e-9

    w = np.linspace(-0.99, 0.99, 397)
    f, g = symmetric_part(response, w), asymmetric_part(response, w)
    np.testing.assert_allclose(f - g, response.q_up(w), rtol=0, atol=1e-12)
    np.testing.assert_allclose(f + g, response.q_down(w), rtol=0, atol=1e-12)
    # The asymmetric drift −|Δ|·G(w) points towards w◇ from both sides (what biases analog SGD).
    off = np.abs(w - w_sym) > 1e-6
    assert np.all(g[off] * (w[off] - w_sym) > 0)


def test_soft_bounds_matches_the_documented_formula():
    r = SoftBounds(tau_max=2.0, tau_min=0.5)
    w = np.array([-0.4, 0.0, 0.3])
    np.testing.assert_allclose(r.q_up(w), 1 - w / 2.0)
    np.testing.assert_allclose(r.q_down(w), 1 + w / 0.5)
    assert r.symmetric_point() == 0.0


def test_constant_step_without_symmetric_point_raises():
    assert LinearStep().symmetric_point() == 0.0  # ideal device: every point is symmetric
    with pytest.raises(ValueError, match="up_down"):
        LinearStep(up_down=0.2).symmetric_point()


def test_stochastic_rounding_is_unbiased_and_capped():
    device = PulsedDevice(dw_min=1e-3, max_pulses=5)
    rng = np.random.default_rng(0)
    n = pulse_counts(np.full(100_000, 2.3e-3), device, rng)
    assert set(np.unique(n)) == {2, 3}
    # Bernoulli(0.3) fraction: SE of the mean = sqrt(0.21/1e5) = 1.45e-3; 5 SE = 7.3e-3.
    assert abs(n.mean() - 2.3) < 7.3e-3
    assert np.all(pulse_counts(np.full(10, -1.0), device, rng) == 5)  # cap


def test_ideal_device_moves_whole_pulses_and_clips():
    device = PulsedDevice(LinearStep(), dw_min=1e-2, max_pulses=100)
    rng = np.random.default_rng(1)
    w = rng.uniform(-0.5, 0.5, 1000)
    delta = rng.uniform(-0.2, 0.2, 1000)
    new, n = pulse_update(w, delta, device, rng)
    # No noise, q = 1: the change is exactly the signed pulse count times dw_min.
    np.testing.assert_allclose(new - w, np.sign(delta) * n * 1e-2, atol=1e-12)
    assert np.all(np.abs(new - (w + delta)) < 1e-2)  # granularity: less than one pulse off
    top, _ = pulse_update(np.array([0.995]), np.array([0.5]), device, rng)
    assert top[0] == 1.0  # hard bound


def test_same_generator_state_same_result():
    device = PulsedDevice(SoftBounds(), dw_min_std=0.3)
    w, delta = np.zeros(50), np.linspace(-0.01, 0.01, 50)
    a = pulse_update(w, delta, device, np.random.default_rng(7))
    b = pulse_update(w, delta, device, np.random.default_rng(7))
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.pulses, b.pulses)


def _train(device, w0, deltas, rng):
    w = w0.copy()
    for d in deltas:
        w = pulse_update(w, np.full_like(w, d), device, rng).weights
    return w


def _mean_field(device, w0, deltas):
    m = np.array([w0])
    for d in deltas:
        m = expected_update(m, np.array([d]), device)
    return float(m[0])


@pytest.mark.parametrize("c2c", ["multiplicative", "additive"])
def test_sub_pulse_updates_follow_the_mean_field_exactly_on_average(c2c):
    # Updates below one pulse (|Δ| < dw_min): each is 0 or 1 pulse at the current weight, so for a
    # response linear in w (soft bounds) E[w_k+1] = E[w_k] + Δ·q(E[w_k]) with no approximation.
    # The only error left is sampling: tolerance 5 standard errors of the device average.
    device = PulsedDevice(SoftBounds(1.0, 1.0, 0.1), dw_min=1e-3, dw_min_std=0.3, c2c=c2c)
    deltas = [0.8e-3 if k % 2 == 0 else -0.5e-3 for k in range(300)]
    w0, n_dev = 0.3, 20_000
    w = _train(device, np.full(n_dev, w0), deltas, np.random.default_rng(2))
    predicted = _mean_field(device, w0, deltas)
    se = w.std(ddof=1) / np.sqrt(n_dev)
    assert abs(w.mean() - predicted) < 5 * se
    # The test can fail: an ideal device would land far away (asymmetry moves it by ~0.03).
    assert abs((w0 + sum(deltas)) - predicted) > 100 * se


def test_multi_pulse_trains_follow_the_mean_field_to_second_order():
    # Trains of 3–4 pulses: the mean field evaluates q at the start of the train, the device at
    # every pulse, a difference of at most n(n−1)/2·dw_min²·max|q'|·max|q| per update. Here
    # n ≤ 4, |q+'| = (1+up_down)/tau and q+ ≤ 1+up_down for w ≥ 0 (w stays in [0.2, 0.3]), so
    # ≤ 6·1e-8·1.15² ≈ 8e-8 per update, ≤ 1.6e-5 over 200 updates. (Multiplicative noise has mean 1
    # and q is linear, so the noise adds no bias.) Tolerance = that bound + 5 standard errors.
    tau, up_down, dw = 1.0, 0.15, 1e-4
    device = PulsedDevice(SoftBounds(tau, tau, up_down), dw_min=dw, dw_min_std=0.3)
    deltas = [3.4 * dw] * 200
    w0, n_dev = 0.2, 20_000
    w = _train(device, np.full(n_dev, w0), deltas, np.random.default_rng(3))
    predicted = _mean_field(device, w0, deltas)
    bound = 200 * 6 * dw**2 * (1 + up_down) ** 2 / tau
    se = w.std(ddof=1) / np.sqrt(n_dev)
    assert abs(w.mean() - predicted) < bound + 5 * se
    assert abs((w0 + sum(deltas)) - predicted) > 100 * (bound + 5 * se)


def test_expected_update_is_q_plus_up_and_q_minus_down():
    device = PulsedDevice(ExpStep(0.2, 0.3, 1.5, 1.0), dw_min=1e-3, max_pulses=31)
    w = np.array([-0.3, 0.1, 0.4])
    up = expected_update(w, np.full(3, 0.01), device)
    down = expected_update(w, np.full(3, -0.01), device)
    np.testing.assert_allclose(up, w + 0.01 * device.response.q_up(w), atol=1e-15)
    np.testing.assert_allclose(down, w - 0.01 * device.response.q_down(w), atol=1e-15)
    capped = expected_update(w, np.full(3, 1.0), device)  # 1000 pulses asked, 31 allowed
    np.testing.assert_allclose(capped, w + 0.031 * device.response.q_up(w), atol=1e-15)


@pytest.mark.parametrize(
    ("factory", "field"),
    [
        (lambda: LinearStep(slope_up=-0.1), "slope_up"),
        (lambda: LinearStep(slope_down=float("nan")), "slope_down"),
        (lambda: LinearStep(up_down=1.0), "up_down"),
        (lambda: SoftBounds(tau_max=0.0), "tau_max"),
        (lambda: SoftBounds(tau_min=-1.0), "tau_min"),
        (lambda: SoftBounds(up_down=-1.5), "up_down"),
        (lambda: ExpStep(a_up=1.0), "a_up"),
        (lambda: ExpStep(a_down=0.0), "a_down"),
        (lambda: ExpStep(gamma_up=0.0), "gamma_up"),
        (lambda: ExpStep(gamma_down=float("inf")), "gamma_down"),
        (lambda: PowStep(tau_max=-2.0), "tau_max"),
        (lambda: PowStep(gamma_up=-1.0), "gamma_up"),
        (lambda: PulsedDevice(response="soft"), "response"),
        (lambda: PulsedDevice(dw_min=0.0), "dw_min"),
        (lambda: PulsedDevice(dw_min=1.5), "dw_min"),
        (lambda: PulsedDevice(dw_min_std=-0.1), "dw_min_std"),
        (lambda: PulsedDevice(w_min=1.0, w_max=1.0), "w_max"),
        (lambda: PulsedDevice(w_min=float("nan")), "w_min"),
        (lambda: PulsedDevice(max_pulses=0), "max_pulses"),
        (lambda: PulsedDevice(max_pulses=2.5), "max_pulses"),
        (lambda: PulsedDevice(c2c="gaussian"), "c2c"),
    ],
)
def test_bad_parameters_raise_value_error_naming_the_field(factory, field):
    with pytest.raises(ValueError, match=rf"^{field}:"):
        factory()
