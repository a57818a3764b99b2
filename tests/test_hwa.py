"""HWA noise model: torch runs chipsim's formulas and agrees with chipsim for the same draws;
the extended STE passes the clean gradients; a tiny HWA run learns."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chipsim import LayerSpec, faults, get_profile, program
from chipsim.mapping import column_scales, normalise, pair_targets_us
from chipsim.programming import sample_devices
from chipsim.readout import conductances_at as chip_conductances_at
from chipsim.readout import read
from chipsim.reference import analog_matmul as chip_analog_matmul
from chipsim.reference import draw_mvm_noise
from chipsim.rng import Stream, stream
from models import hwa, torch_chip
from models.torch_chip import GradientMode

torch.set_num_threads(1)
YEAR = 365 * 86400.0


def _weights(rows: int = 40, cols: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def _chip_draws(
    shape: tuple[int, ...], seed: int, layer: int = 0, read_seed: int | None = None
) -> torch_chip.DeviceDraws:
    """The exact random numbers chipsim draws for one layer, in its stream order."""

    def n(kind: Stream, *keys: int) -> torch.Tensor:
        return torch.from_numpy(stream(seed, kind, *keys).standard_normal(shape, dtype=np.float32))

    read_xi = n(Stream.READ, read_seed, layer) if read_seed is not None else torch.zeros(shape)
    return torch_chip.DeviceDraws(
        prog=n(Stream.PROG, layer),
        d2d=n(Stream.D2D, layer),
        nu=n(Stream.NU, layer),
        fault_u=torch.from_numpy(stream(seed, Stream.FAULTS, layer).random(shape, dtype=np.float32)),
        read=read_xi,
    )


def test_mapping_runs_identically_on_torch_and_numpy():
    """HWA maps weights with chipsim's own array functions; torch and numpy must agree exactly."""
    w = normalise(_weights(), column_scales(_weights()))
    np.testing.assert_array_equal(pair_targets_us(torch.from_numpy(w), 25.0).numpy(), pair_targets_us(w, 25.0))
    np.testing.assert_array_equal(column_scales(torch.from_numpy(_weights())).numpy(), column_scales(_weights()))
    u = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    for a, b in zip(faults.stuck_masks(torch.from_numpy(u), 0.1, 0.05), faults.stuck_masks(u, 0.1, 0.05)):
        np.testing.assert_array_equal(a.numpy(), b)


@pytest.mark.parametrize(
    "profile", [get_profile("pcm-faulty", d2d_sigma=0.05), get_profile("reram", p_stuck_reset=0.02)]
)
def test_programming_matches_chipsim_for_same_draws(profile):
    # pcm-faulty has 2.5 % stuck devices (both kinds) and d2d exercises the optional gain term;
    # reram shows the torch path is device-agnostic (it only calls the device model).
    w = _weights()
    g_target = pair_targets_us(normalise(w, column_scales(w)), profile.device_model.g_max_us)
    g_np, nu_coded = sample_devices(g_target, profile, seed=7, layer_index=0)
    g_t, nu_t, stuck = torch_chip.program_devices(torch.from_numpy(g_target), profile, _chip_draws(g_target.shape, 7))
    codes = faults.decode_faults(nu_coded)
    assert (codes != faults.HEALTHY).any(), "the profile must produce faults for this test to mean anything"
    np.testing.assert_array_equal(stuck.numpy(), codes != faults.HEALTHY)
    # Same float32 formulas on the same draws; 1e-5 µS (4e-7 of g_max) covers last-ulp differences
    # between numpy's and torch's float32 kernels (pow/log/exp).
    np.testing.assert_allclose(g_t.numpy(), g_np, rtol=1e-6, atol=1e-5)
    healthy = codes == faults.HEALTHY
    np.testing.assert_allclose(nu_t.numpy()[healthy], nu_coded[healthy], rtol=1e-6, atol=1e-7)
    assert (nu_t.numpy()[~healthy] == 0).all()  # stuck devices do not drift


@pytest.mark.parametrize("age", [0.0, 3600.0, YEAR, 10 * YEAR])
def test_drift_and_read_noise_match_chipsim_readout(age):
    profile = get_profile("pcm")
    chip = program([LayerSpec("fc", _weights())], profile, seed=3)
    layer = chip.layers[0]
    g_max = profile.device_model.g_max_us
    g_chip = chip_conductances_at(layer, profile, age, stream(3, Stream.READ, 5, 0))
    # The torch twin on the stored state (float16-decoded, as chipsim reads it) and the same ξ.
    g_prog = torch.from_numpy(layer.g_prog_us(g_max))
    nu = torch.from_numpy(np.maximum(layer.nu.astype(np.float32), 0))
    xi = torch.from_numpy(stream(3, Stream.READ, 5, 0).standard_normal(g_prog.shape, dtype=np.float32))
    g_torch = torch_chip.conductances_at(g_prog, nu, profile, age, xi)
    np.testing.assert_allclose(g_torch.numpy(), g_chip, rtol=1e-5, atol=1e-5)
    if age >= YEAR:  # the comparison is not vacuous: drift moved the conductances by tens of percent
        assert float(g_torch.sum() / g_prog.sum()) < 0.8


def test_gdc_alpha_matches_chipsim_on_a_noise_free_drifting_chip():
    # With drift as the only non-ideality both sides are deterministic given ν: α per tile must be
    # mean|w_prog|/mean|w(t)| from chipsim's own identity read, tile by tile (3 tiles here).
    profile = get_profile("ideal", drift_scale=1.0, tile_rows=16)
    chip = program([LayerSpec("fc", _weights(40, 12))], profile, seed=1)
    layer = chip.layers[0]
    ro = read(chip, YEAR, read_seed=0).layers[0]
    g_max = profile.device_model.g_max_us
    g_prog = torch.from_numpy(layer.g_prog_us(g_max))
    nu = torch.from_numpy(np.maximum(layer.nu.astype(np.float32), 0))
    g_t = torch_chip.conductances_at(g_prog, nu, profile, YEAR, None)
    alpha = torch_chip.gdc_alpha(
        (g_prog[0] - g_prog[1]) / g_max,
        (g_t[0] - g_t[1]) / g_max,
        layer.tiles,
        profile.model_copy(update={"gdc": "global"}),
        np.random.default_rng(0),
    )
    assert len(layer.tiles) == 3
    assert float(alpha.min()) > 1.5  # one year of drift: ~−50 % conductance, so α ≈ 2
    np.testing.assert_allclose(alpha[:, 0].numpy(), ro.alpha_global, rtol=1e-5)


def test_exact_gdc_reference_is_the_chips_mean_target_weight():
    # DESIGN §3.4 / GdcMode.EXACT: α = mean|w_target| / mean|w(t)| per tile, w_target the normalised
    # target weights (not the programmed ones). Programming noise makes mean|w_prog| differ from
    # mean|w_target| by ~1 %, far above the float rounding allowed here.
    profile = get_profile("pcm", gdc="exact", tile_rows=16)
    weight = torch.from_numpy(_weights(40, 12, seed=3))
    aged = torch_chip.age_weights(weight, profile, YEAR, torch.Generator().manual_seed(0), np.random.default_rng(0))
    w_target = (weight / column_scales(weight)).numpy().astype(np.float64)
    w_t = aged.w_t.numpy().astype(np.float64)
    want = [np.abs(w_target[a:b]).mean() / np.abs(w_t[a:b]).mean() for a, b in aged.tiles]
    assert len(aged.tiles) == 3
    np.testing.assert_allclose(aged.alpha[:, 0].numpy(), want, rtol=1e-6)
    # The chip computes the same definition: its exact baseline is mean|w_target| of each tile.
    chip = program([LayerSpec("fc", weight.numpy())], profile, seed=2)
    layer = chip.layers[0]
    np.testing.assert_allclose(
        layer.gdc_baseline_exact,
        [np.abs(layer.w_norm[a:b].astype(np.float64)).mean() for a, b in layer.tiles],
        rtol=1e-6,
    )


def test_analog_matmul_matches_chipsim_reference():
    # Full pcm periphery (DAC clip + quantisation, per-MVM noise, IR drop, output noise, ADC, GDC)
    # on two tiles, same read-out and same per-MVM draws: the torch twin must equal chipsim's
    # numpy reference. Both run in float64; 1e-9 allows BLAS summation-order differences only.
    profile = get_profile("pcm", tile_rows=64)
    w = _weights(100, 24, seed=2)
    bias = np.linspace(-1, 1, 24).astype(np.float32)
    chip = program([LayerSpec("fc", w, input_range=0.8, bias=bias)], profile, seed=4)
    layer = chip.layers[0]
    ro = read(chip, 86400.0, read_seed=2).layers[0]
    x = np.random.default_rng(9).uniform(-1.0, 1.0, (32, 100))  # |x| > r = 0.8 exercises the clip
    noise = draw_mvm_noise(32, layer, np.random.default_rng(11))
    ref = chip_analog_matmul(x, layer, ro, profile, noise=noise)
    aged = torch_chip.AgedWeights(
        w_t=torch.from_numpy(ro.w_norm).double(),
        w_prog=torch.from_numpy(ro.w_norm).double(),  # w_prog: unused here
        col_scale=torch.from_numpy(layer.col_scale).double(),
        tiles=layer.tiles,
        alpha=torch.from_numpy(ro.alpha(profile.gdc)).double(),
    )
    draws = torch_chip.MvmDraws([torch.from_numpy(a).double() for a in noise.draws])
    y = torch_chip.analog_matmul(
        torch.from_numpy(x), aged, layer.input_range, profile, draws, torch.from_numpy(bias).double()
    )
    assert len(layer.tiles) == 2
    np.testing.assert_allclose(y.numpy(), ref, rtol=1e-9, atol=1e-9)


def _layer_and_ctx(kind: str, mode: GradientMode = GradientMode.STE):
    torch.manual_seed(0)
    layer = hwa.AnalogLinear(20, 6) if kind == "linear" else hwa.AnalogConv2d(2, 4, 3, padding=1)
    layer.input_range.data.fill_(0.9)
    layer.learn_range = True
    layer.input_range.requires_grad_(True)
    ctx = hwa.HwaContext(hwa.HwaConfig(mode=mode), torch.Generator().manual_seed(1))
    ctx.new_batch(1.0, YEAR)
    hwa.attach(layer, ctx)
    layer.train()
    x = torch.randn((16, 20) if kind == "linear" else (4, 2, 5, 5), generator=torch.Generator().manual_seed(2))
    return layer, ctx, x.requires_grad_(True)


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_extended_ste_passes_clean_gradients(kind):
    layer, _, x = _layer_and_ctx(kind)
    y = layer(x)
    clean = layer._clean(layer._clip_input(x))
    # The forward value is the chip's: one year of PCM noise changes outputs by far more than 1 %.
    assert float((y - clean).detach().norm() / clean.detach().norm()) > 0.01
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    params = [layer.weight, layer.bias, layer.input_range, x]
    grads_hwa = torch.autograd.grad((y * g).sum(), params)
    grads_clean = torch.autograd.grad((clean * g).sum(), params)
    for a, b in zip(grads_hwa, grads_clean):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the delta is detached: identical graphs
    assert float(grads_hwa[2].abs()) > 0  # |x| > r = 0.9 somewhere: the range learns from clipping


def test_through_mode_backpropagates_through_the_noise_model():
    layer, _, x = _layer_and_ctx("conv", mode=GradientMode.THROUGH_NOISE)
    y = layer(x)
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3))
    (gw,) = torch.autograd.grad((y * g).sum(), [layer.weight])
    assert torch.isfinite(gw).all()  # zero conductances must not turn the gradient into NaN
    (gc,) = torch.autograd.grad((layer._clean(layer._clip_input(x)) * g).sum(), [layer.weight])
    assert float((gw - gc).norm() / gc.norm()) > 0.01  # it is not the clean gradient


def test_gradient_modes_are_one_chip():
    """Same generator state → the same chip instance in every gradient mode: STE and THROUGH_CHIP
    bit for bit, THROUGH_NOISE up to its straight-through surrogate (x + (q − x) is q to the last
    ulp), with every perturbation class on."""
    profile = get_profile("pcm-faulty", gdc="off", ir_drop=5.0, d2d_sigma=0.05, out_levels=30)
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(40, 7, generator=gen) * 0.3
    x = torch.rand(16, 40, generator=gen)
    outs = {}
    for mode in GradientMode:
        g = torch.Generator().manual_seed(11)
        aged = torch_chip.age_weights(w, profile, 3600.0, g, np.random.default_rng(0), gradient=mode)
        draws = torch_chip.MvmDraws.draw(16, 7, len(aged.tiles), g)
        outs[mode] = torch_chip.analog_matmul(x, aged, torch.tensor(0.8), profile, draws, gradient=mode)
    assert torch.equal(outs[GradientMode.STE], outs[GradientMode.THROUGH_CHIP])
    torch.testing.assert_close(outs[GradientMode.THROUGH_NOISE], outs[GradientMode.STE], rtol=1e-6, atol=1e-6)


def test_through_chip_gradient_on_an_ideal_chip_is_the_clipped_layer():
    """Ideal chip (no noise, no drift, no quantisation) with the DAC clip at r: the value is
    clip(x)·W and THROUGH_CHIP's gradients are the analytic ones: dL/dx = mask·(g Wᵀ) with
    mask = |x| ≤ r, dL/dW = clip(x)ᵀ g; the DAC range, a digital constant, gets none."""
    profile = get_profile("ideal", in_clip=True, in_levels=0, out_levels=0, out_bound=0.0)
    gen = torch.Generator().manual_seed(5)
    w = (torch.randn(30, 6, generator=gen, dtype=torch.float64) * 0.3).requires_grad_(True)
    x = (torch.randn(8, 30, generator=gen, dtype=torch.float64) * 0.6).requires_grad_(True)
    r = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    aged = torch_chip.age_weights(w, profile, 0.0, gen, np.random.default_rng(0), gradient=GradientMode.THROUGH_CHIP)
    draws = torch_chip.MvmDraws.draw(8, 6, len(aged.tiles), gen, torch.float64)
    y = torch_chip.analog_matmul(x, aged, r, profile, draws, gradient=GradientMode.THROUGH_CHIP)
    clipped = x.detach().clamp(-0.5, 0.5)
    torch.testing.assert_close(y, clipped @ w.detach(), rtol=1e-12, atol=1e-12)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    gx, gw = torch.autograd.grad((y * g).sum(), [x, w], retain_graph=True)
    mask = (x.detach().abs() <= 0.5).to(torch.float64)
    assert 0 < float(mask.mean()) < 1  # some inputs clip, some do not
    torch.testing.assert_close(gx, mask * (g @ w.detach().T), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gw, clipped.T @ g, rtol=1e-12, atol=1e-12)
    assert torch.autograd.grad(y.sum(), r, allow_unused=True)[0] is None


def test_the_trainer_runs_the_chip_schedule():
    """train(chip=...) replaces the recipe's preset chip: every batch's profile comes from the
    schedule at the noise ramp (ramp_epochs=1 → step k of 17 per epoch has ρ = k/17)."""
    from models.train import RECIPES, train

    seen: list[float] = []
    ideal = get_profile("ideal")

    def profile_at(ramp: float):
        seen.append(ramp)
        return ideal

    schedule = hwa.ChipSchedule(profile_at=profile_at, age_s=5.0)
    recipe = replace(RECIPES["mlp-hwa"], ramp_epochs=1, init_from_plain=False, distill=0.0)
    res = train(recipe, progress=False, max_steps=3, chip=schedule)
    assert res.steps == 3
    steps_per_epoch = math.ceil(1077 / recipe.batch_size)  # the digits training split: 1077 images
    assert seen == [1.0] + [k / steps_per_epoch for k in (1, 2, 3)]  # the context's first chip, then 3 batches


def test_gradient_mode_accepts_the_recorded_names():
    assert hwa.HwaConfig(mode="through").mode is GradientMode.THROUGH_NOISE
    assert hwa.HwaConfig().mode is GradientMode.STE
    assert hwa.HwaConfig(mode="through").to_json()["mode"] == "through"  # the recipe JSON keeps the name
    with pytest.raises(ValueError):
        hwa.HwaConfig(mode="sideways")


def test_training_profile_scales_and_ramp():
    cfg = hwa.HwaConfig(noise_scale=2.0, fault_scale=10.0, gdc=False)
    base = get_profile("pcm")
    p = hwa.training_profile(cfg, strength=0.5)
    assert p.prog_noise_scale == pytest.approx(base.prog_noise_scale)
    assert p.w_noise == pytest.approx(base.w_noise) and p.out_noise == pytest.approx(base.out_noise)
    assert p.drift_scale == pytest.approx(0.5) and p.p_stuck_reset == pytest.approx(base.p_stuck_reset * 5)
    assert p.gdc == "off"
    p0 = hwa.training_profile(cfg, strength=0.0)
    assert p0.prog_noise_scale == p0.read_noise_scale == p0.drift_scale == p0.out_noise == 0
    assert p0.in_levels == base.in_levels  # quantisation is not ramped: it is not noise


def test_sample_age_is_log_uniform():
    g = torch.Generator().manual_seed(0)
    ages = np.array([hwa.sample_age(g, 1.0, 10 * YEAR) for _ in range(4000)])
    assert ages.min() >= 1.0 and ages.max() <= 10 * YEAR
    # log10 of a log-uniform age is uniform on [0, 8.5]: mean 4.25, std of the mean 0.039 → 4σ bound.
    assert abs(np.log10(ages).mean() - math.log10(10 * YEAR) / 2) < 0.16


def test_aged_weights_statistics_follow_the_chip():
    # Relative weight error at 1 y without GDC, torch draws vs chipsim draws (independent seeds):
    # both are the same distribution, so the means over 40×64 weights agree to a few percent.
    w = _weights(40, 64, seed=5)
    profile = get_profile("pcm")
    ro = read(program([LayerSpec("fc", w)], profile, seed=0), YEAR, 0).layers[0]
    ref = normalise(w, column_scales(w))
    err_chip = np.linalg.norm(ro.w_norm - ref) / np.linalg.norm(ref)
    aged = torch_chip.age_weights(
        torch.from_numpy(w), profile, YEAR, torch.Generator().manual_seed(0), np.random.default_rng(0)
    )
    err_torch = float((aged.w_t - torch.from_numpy(ref)).norm() / torch.from_numpy(ref).norm())
    assert err_chip > 0.3  # a year of drift is a large error: the comparison is meaningful
    assert err_torch == pytest.approx(err_chip, rel=0.05)


def test_tiny_hwa_run_lowers_the_noisy_loss():
    from models.data import load_split
    from models.train import RECIPES, train

    # The zoo's HWA recipe (chip noise ×1.5, faults ×10, ramp, clipping, learned ranges) from
    # scratch, with a larger learning rate so that 40 steps are enough to learn something.
    recipe = replace(RECIPES["mlp-hwa"], lr=1e-2, ramp_epochs=1)
    data = load_split("train")
    x, y = torch.from_numpy(data.x[:256]), torch.from_numpy(data.y[:256])

    def noisy_loss(model) -> float:  # same chip draws (seeded) before and after training
        ctx = hwa.HwaContext(hwa.HwaConfig(), torch.Generator().manual_seed(123))
        ctx.new_batch(1.0, 86400.0)
        hwa.attach(model, ctx)
        model.train()
        with torch.no_grad():
            loss = float(F.cross_entropy(model(x), y))
        hwa.attach(model, None)
        return loss

    from models.zoo_models import build

    before = noisy_loss(build("mlp", recipe.seed))
    res = train(recipe, progress=False, max_steps=40)  # from scratch, no teacher: ~1 s
    assert res.model.hidden[1].input_range.item() != pytest.approx(1.0)  # ranges were calibrated/learned
    after = noisy_loss(res.model)
    assert res.steps == 40
    assert before > 2.0  # untrained: about ln(10) = 2.30
    assert after < 0.7 * before, (before, after)  # measured: 2.31 → 1.27 (seeded, so deterministic here)
