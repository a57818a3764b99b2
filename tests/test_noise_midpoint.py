"""The activation-noise sweep and the logistic midpoint fit (studies.noise_midpoint, studies.activation_noise)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from studies.noise_midpoint import MidpointFitError, Sweep, fit_logistic, logistic, midpoint_difference, sweep

SIGMAS = np.logspace(-2, 1, 13)


def _synthetic(mu: float, k: float, top: float, n_seeds: int, n_images: int, seed: int) -> np.ndarray:
    """Per-image correctness drawn as Bernoulli of a known logistic curve, (S, R, N)."""
    rng = np.random.default_rng(seed)
    p = logistic(np.log(SIGMAS), top, math.log(mu), k, 0.1)
    return rng.random((len(SIGMAS), n_seeds, n_images)) < p[:, None, None]


def test_fit_recovers_an_exact_curve():
    acc = logistic(np.log(SIGMAS), 0.9, math.log(0.3), 3.0, 0.1)
    fit = fit_logistic(np.log(SIGMAS), acc, chance=0.1)
    assert fit.mu == pytest.approx(0.3, rel=1e-4)
    assert fit.slope == pytest.approx(3.0, rel=1e-3)
    assert fit.top == pytest.approx(0.9, rel=1e-4)
    assert fit.rmse < 1e-6 and fit.r2 > 0.999999


@pytest.mark.slow  # 20 data sets × 100 bootstrap refits
def test_bootstrap_interval_covers_the_true_midpoint():
    # 20 independent data sets of 5 seeds × 400 images; a 95 % interval misses the truth in a
    # data set with p = 0.05, so ≥ 17/20 covered fails a correct interval with probability
    # P(Binomial(20, 0.05) ≥ 4) ≈ 1.6 %, and the seeds are fixed, so the test is deterministic.
    covered = 0
    for rep in range(20):
        c = _synthetic(0.3, 3.0, 0.9, 5, 400, seed=rep)
        fit = fit_logistic(np.log(SIGMAS), c, chance=0.1, n_boot=100, seed=rep)
        assert fit.n_failed == 0
        covered += fit.mu_ci[0] <= 0.3 <= fit.mu_ci[1]
    assert covered >= 17


def test_interval_narrows_with_more_images():
    few = fit_logistic(np.log(SIGMAS), _synthetic(0.3, 3.0, 0.9, 3, 100, 1), 0.1, n_boot=100)
    many = fit_logistic(np.log(SIGMAS), _synthetic(0.3, 3.0, 0.9, 3, 1600, 1), 0.1, n_boot=100)
    # width ∝ 1/√N: 16× the images → ~4× narrower; 2× leaves room for bootstrap noise
    assert (many.mu_ci[1] - many.mu_ci[0]) * 2 < few.mu_ci[1] - few.mu_ci[0]


def test_midpoint_ratio_of_two_models():
    a = fit_logistic(np.log(SIGMAS), _synthetic(0.6, 3.0, 0.9, 3, 800, 2), 0.1, n_boot=100, seed=1)
    b = fit_logistic(np.log(SIGMAS), _synthetic(0.3, 3.0, 0.9, 3, 800, 3), 0.1, n_boot=100, seed=2)
    ratio, (lo, hi) = midpoint_difference(a, b)
    assert ratio == pytest.approx(2.0, rel=0.15)
    assert lo > 1.0  # a doubling of µ is resolved by 3 × 800 images


def test_too_few_sigmas_is_refused():
    with pytest.raises(MidpointFitError, match="≥ 4"):
        fit_logistic(np.log(SIGMAS[:3]), np.array([0.9, 0.5, 0.1]), 0.1)
    with pytest.raises(MidpointFitError, match="shape"):
        fit_logistic(np.log(SIGMAS), np.zeros(5), 0.1)


def test_sweep_calls_every_sigma_and_seed_and_round_trips():
    calls = []

    def model_fn(sigma, seed):
        calls.append((sigma, seed))
        return np.arange(10) < round(10 * sigma)  # correctness depends on σ only

    s = sweep(model_fn, [0.1, 0.5], [0, 7])
    assert calls == [(0.1, 0), (0.1, 7), (0.5, 0), (0.5, 7)]
    assert s.accuracy.tolist() == [[0.1, 0.1], [0.5, 0.5]]
    back = Sweep.from_json(s.to_json())
    assert np.array_equal(back.correct, s.correct) and back.seeds == (0, 7)
    with pytest.raises(ValueError, match="positive"):
        sweep(model_fn, [0.0, 1.0], [0])


def test_torch_noise_on_every_layer_output():
    torch = pytest.importorskip("torch")
    from models.hwa import AnalogLinear
    from studies.activation_noise import clipped_copy, noisy_layers, torch_model_fn

    torch.manual_seed(0)
    model = torch.nn.Sequential(AnalogLinear(4, 8), torch.nn.ReLU(), AnalogLinear(8, 3)).eval()
    x = torch.randn(300, 4).numpy()
    y = model(torch.as_tensor(x)).argmax(1).numpy()  # labels = the clean model's answers
    fn = torch_model_fn(model, x, y, batch=128)
    assert len(noisy_layers(model)) == 2
    assert fn(1e-6, 0).all()  # negligible noise: every answer as without noise
    big = fn(100.0, 0)
    assert 0.15 < big.mean() < 0.55  # σ ≫ logits: ~chance (1/3) on 300 images
    assert np.array_equal(fn(0.5, 3), fn(0.5, 3))  # same seed, same draws
    clipped = clipped_copy(model, 0.5)
    w0, w1 = model[0].weight.detach(), clipped[0].weight.detach()
    assert torch.all(w1.abs() <= 0.5 * w0.std(dim=1, keepdim=True) + 1e-7)
    assert not torch.equal(w0, w1)
