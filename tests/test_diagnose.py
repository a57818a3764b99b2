"""Gradient diagnostics (studies.gradient_diagnostics), the ADC's expected derivative
(models.torch_chip) and the study's core (studies.diagnose) on cases with
known answers: zero-mean additive noise keeps the mean gradient aligned with finite variance, a
100 % stuck-at rate passes no gradient, a 1-step ADC passes none, an 8-bit ADC nearly all of it,
and the gradient "through the chip" is computed on exactly the chip the trainer's forward uses.
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from models import hwa  # noqa: E402
from models.data import load_split  # noqa: E402
from models.torch_chip import adc_expected_derivative  # noqa: E402
from studies import (  # noqa: E402
    diagnose,
    diagnose_setting,
    gradient_diagnostics,
)
from studies.perturbations import CLASSES, PerturbationClass  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small kernels: one thread is as fast and does not spin against other jobs."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --------------------------------------------------------------------------- pure metrics
def test_zero_mean_additive_noise_on_gradients():
    """g_k = g + ε_k, ε ~ N(0, σ²I): cos(mean, g) ≈ 1/sqrt(1 + v/K), rel. var ≈ v/(1 + v/K),
    v = σ²P/‖g‖². With P = 2000 the estimates' relative sampling error is ~sqrt(2/(P(K−1))) ≈ 1 %,
    so 5 % tolerances are loose and still exclude any bias of the metric."""
    gen = torch.Generator().manual_seed(0)
    P, K, v = 2000, 32, 0.5
    g = torch.randn(P, generator=gen, dtype=torch.float64)
    sigma = math.sqrt(v) * float(g.norm()) / math.sqrt(P)
    draws = g + sigma * torch.randn(K, P, generator=gen, dtype=torch.float64)
    cos = gradient_diagnostics.consistency(draws, g)
    assert cos == pytest.approx(1 / math.sqrt(1 + v / K), abs=0.01)
    assert cos > 0.99
    rv = gradient_diagnostics.relative_variance(draws)
    assert math.isfinite(rv)
    assert rv == pytest.approx(v / (1 + v / K), rel=0.05)


def test_metric_edge_cases():
    z = torch.zeros(4, 10)
    assert gradient_diagnostics.consistency(z, torch.ones(10)) == 0.0
    assert math.isnan(gradient_diagnostics.relative_variance(z))
    same = torch.ones(3, 5)
    assert gradient_diagnostics.relative_variance(same) == 0.0
    assert gradient_diagnostics.consistency(same, torch.ones(5)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        gradient_diagnostics.relative_variance(torch.ones(1, 5))


def test_weight_sensitivity_counts_zeroed_weights():
    clean = [torch.ones(10, 10)]
    half = torch.ones(10, 10)
    half[:5] = 0
    assert gradient_diagnostics.weight_sensitivity([[half]], clean)[0] == pytest.approx(0.5)
    assert gradient_diagnostics.weight_sensitivity([[torch.zeros(10, 10)]], clean)[0] == 0.0
    # a uniform rescaling loses nothing; the average over draws counts a weight dead on one of
    # two chips as half
    assert gradient_diagnostics.weight_sensitivity([[1e-4 * torch.ones(10, 10)]], clean)[0] == 1.0
    assert gradient_diagnostics.weight_sensitivity([[half], [torch.ones(10, 10)]], clean)[0] == pytest.approx(0.75)


@pytest.mark.parametrize("levels", [1, 2, 6, 14, 254])
def test_adc_expected_derivative_integrates_to_the_range(levels):
    """∫ d/dy E[ADC(y + σξ)] dy over a span beyond the clip = E[ADC(+L)] − E[ADC(−L)] = 2·bound."""
    y = torch.linspace(-14, 14, 280_001, dtype=torch.float64)
    gate = adc_expected_derivative(y, 0.04, 10.0, levels)
    integral = float(torch.trapezoid(gate, y))
    assert integral == pytest.approx(20.0, rel=1e-3)


def test_adc_expected_derivative_matches_monte_carlo():
    """Central difference of the Monte-Carlo mean of chipsim's own ADC with common noise."""
    from chipsim.periphery import adc

    gen = torch.Generator().manual_seed(1)
    xi = torch.randn(400_000, generator=gen, dtype=torch.float64)
    sigma, bound, levels, h = 0.3, 10.0, 14, 0.05
    for y0 in (0.4, 0.7, 2.1, 9.9):
        up = adc(y0 + h + sigma * xi, bound, levels).mean()
        dn = adc(y0 - h + sigma * xi, bound, levels).mean()
        mc = float(up - dn) / (2 * h)
        exact = float(adc_expected_derivative(torch.tensor([y0], dtype=torch.float64), sigma, bound, levels)[0])
        assert exact == pytest.approx(mc, abs=0.03)


def test_adc_derivative_regimes():
    y = torch.linspace(-5, 5, 10_001, dtype=torch.float64)
    fine = adc_expected_derivative(y, 0.04, 10.0, 254)  # Δ ≈ 2σ: flat ≈ 1
    assert float((fine - 1).abs().max()) < 0.05
    dead = adc_expected_derivative(y, 0.04, 10.0, 1)  # one step: nothing crosses inside ±5
    assert float(dead.max()) < 1e-12
    assert gradient_diagnostics.pass_fraction(fine) == 1.0 and gradient_diagnostics.pass_fraction(dead) == 0.0
    sat = adc_expected_derivative(torch.tensor([20.0, -20.0]), 0.04, 10.0, 0)  # clip only
    assert float(sat.abs().max()) < 1e-12
    ideal = adc_expected_derivative(y, 0.04, 0.0, 0)
    assert bool((ideal == 1).all())


def test_verdict_rules():
    ok, why = gradient_diagnostics.diagnostic_verdict(0.95, 0.2, 0.9, 1.0)
    assert ok and not why
    ok, why = gradient_diagnostics.diagnostic_verdict(0.95, 0.2, 0.0, 1.0)
    assert not ok and "weight sens." in why[0]
    assert gradient_diagnostics.gap_recovered(0.98, 0.60, 0.90)[1] == "closes"
    assert gradient_diagnostics.gap_recovered(0.98, 0.60, 0.70)[1] == "open"
    assert gradient_diagnostics.gap_recovered(0.98, 0.975, 0.90)[1] == "no gap"
    assert gradient_diagnostics.gap_recovered(0.98, 0.58, 0.78)[0] == pytest.approx(0.5)


# --------------------------------------------------------------------------- on a tiny model
class Tiny(nn.Module):
    """One analog layer on the digits pixels (64 → 10)."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.fc = hwa.AnalogLinear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


@pytest.fixture(scope="module")
def tiny():
    data = load_split("train")
    x, y = torch.from_numpy(data.x[:128]), torch.from_numpy(data.y[:128])
    model = Tiny()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(30):  # a few steps: a model whose gradient is neither random nor zero
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def pclass(fields: dict, ramp: bool = True) -> PerturbationClass:
    return PerturbationClass("test", "test", "test", (1.0,), lambda s: fields, lambda s: f"{s:g}", ramp=ramp)


def diag(model, x, y, fields: dict, draws: int = 8):
    g_clean = diagnose_setting.clean_gradient(model, x, y)
    return diagnose_setting.diagnose_setting(model, pclass(fields), 1.0, x, y, g_clean, draws, seed=0)


def test_zero_mean_additive_output_noise_keeps_the_gradient(tiny):
    """Additive zero-mean noise on the MVM outputs (ADC output noise, no quantisation): K = 8
    draws at rel. var < 0.1 bound the finite-K shrinkage of the cosine by 1/sqrt(1 + 0.1/8) > 0.99."""
    model, x, y = tiny
    d = diag(model, x, y, dict(out_noise=0.05))
    assert d.cos_ste > 0.98 and d.cos_through > 0.98
    assert math.isfinite(d.relvar_ste) and d.relvar_ste < 0.1
    assert d.sens_weights > 0.95 and d.sens_outputs == 1.0
    assert d.forward_mismatch < 1e-5


def test_stuck_at_everything_gives_zero_sensitivity(tiny):
    model, x, y = tiny
    d = diag(model, x, y, dict(p_stuck_reset=0.8, p_stuck_set=0.2), draws=3)
    assert d.sens_weights == 0.0
    assert d.cos_through == 0.0  # nothing reaches the weights through the chip …
    assert d.cos_ste != 0.0  # … while the STE gradient, which bypasses the faults, is not zero
    half = diag(model, x, y, dict(p_stuck_reset=0.4, p_stuck_set=0.1), draws=3)
    # a weight's gradient flows through the one device of its pair that holds it: dead w.p. 0.5
    assert half.sens_weights == pytest.approx(0.5, abs=0.05)


def test_one_step_adc_collapses_sensitivity(tiny):
    model, x, y = tiny
    coarse = diag(model, x, y, dict(out_levels=1, out_bound=10.0, out_noise=0.04), draws=3)
    fine = diag(model, x, y, dict(out_levels=254, out_bound=10.0, out_noise=0.04), draws=3)
    assert coarse.sens_outputs < 0.05 and coarse.sens_weights < 0.05
    assert fine.sens_outputs > 0.95 and fine.sens_weights > 0.9
    assert fine.forward_mismatch < 1e-5 and coarse.forward_mismatch < 1e-5


def test_context_follows_the_trainer_ramp():
    pc = CLASSES["stuck"]
    ctx = diagnose_setting.make_context(pc, 0.1, seed=0)
    ctx.new_batch(0.5)
    assert ctx.profile.p_stuck_reset == pytest.approx(0.04) and ctx.profile.gdc == "off"
    assert ctx.age_s == pc.age_s
    adc_ctx = diagnose_setting.make_context(CLASSES["adc"], 6, seed=0)
    adc_ctx.new_batch(0.0)  # quantisation is not ramped
    assert adc_ctx.profile.out_levels == 6


# --------------------------------------------------------------------------- the CLI's core
@pytest.mark.slow  # the whole study end to end: trains and evaluates a dozen tiny models
def test_study_smoke(tmp_path):
    cfg = diagnose.StudyConfig(
        arch="mlp",
        plain_epochs=1,
        diag_epochs=1,
        hwa_epochs=1,
        max_steps=3,
        draws=2,
        batch=32,
        n_chips=1,
        classes=("stuck", "adc"),
        strengths={"stuck": (0.01, 1.0), "adc": (254, 1)},
        progress=False,
    )
    results = diagnose.run_study(cfg)
    assert [r["class"] for r in results["table"]] == ["stuck", "adc"]
    assert results["diagnostics"]["stuck"][1]["sens_weights"] == 0.0
    assert results["diagnostics"]["adc"][1]["sens_outputs"] < 0.05
    for r in results["table"]:
        assert r["outcome"] in ("closes", "open", "no gap")
        assert r["strength"] in cfg.sweep(r["class"])
    assert set(results["hwa_accuracy"]) == {"stuck", "adc", "none"}
    diagnose.write_report(results, tmp_path, "python -m studies.diagnose mlp (test)")
    text = (tmp_path / "README.md").read_text()
    assert "| stuck-at faults |" in text and "ADC discretisation" in text
    assert (tmp_path / "diagnose.png").stat().st_size > 10_000
    assert (tmp_path / "results.json").exists()
