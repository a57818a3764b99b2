"""HWA convolutions without unfolding (models.torch_chip.analog_conv2d): the same chip as the
unfolded analog product, checked against chipsim's numpy reference on the unfolded patches and
against the unfolded torch path in every gradient mode; a tiny ResNet still learns through it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from chipsim import LayerSpec, get_profile, program
from chipsim.readout import read
from chipsim.reference import analog_matmul as chip_analog_matmul
from chipsim.reference import draw_mvm_noise
from models import hwa, torch_chip
from models.fmnist_models import ResNet, StridedAnalogConv2d
from models.torch_chip import GradientMode

torch.set_num_threads(1)

# 5 input channels × 3×3 = 45 crossbar rows; ≤ 32-row tiles split them evenly, [0, 23) and [23, 45):
# the boundary cuts channel 2's kernel after 5 of its 9 elements (the masked-weight path).
C_IN, C_OUT, TILE_ROWS = 5, 6, 32


def _unfolded_layer(layer: hwa.AnalogConv2d):
    """The layer's previous noisy path, the reference: unfold, ``analog_matmul`` on the rows, fold."""

    def through_chip(x, aged, r, ctx, draws, gradient, gates):
        rows = layer._to_rows(x)
        return layer._from_rows(torch_chip.analog_matmul(rows, aged, r, ctx.profile, draws, None, gradient, gates), x)

    return through_chip


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, 0), (2, 2)])
def test_conv_equals_chipsim_reference_on_unfolded_patches(stride, padding):
    # Full pcm periphery (DAC clip + quantisation, IR drop, per-MVM and output noise, ADC, GDC) on
    # two tiles, same read-out and the same per-MVM draws. Both in float64: the products differ
    # only in summation order (~1e-16 relative), so 1e-9 leaves room for rounding only — a
    # misplaced row, ramp or noise draw changes outputs by ≥ 1e-3.
    profile = get_profile("pcm", tile_rows=TILE_ROWS)
    rng = np.random.default_rng(3)
    w_rows = rng.standard_normal((C_IN * 9, C_OUT)).astype(np.float32)
    bias = np.linspace(-0.5, 0.5, C_OUT).astype(np.float32)
    chip = program([LayerSpec("conv", w_rows, input_range=0.8, bias=bias)], profile, seed=4)
    layer = chip.layers[0]
    assert layer.tiles == [(0, 23), (23, 45)]
    ro = read(chip, 86400.0, read_seed=2).layers[0]
    x = torch.from_numpy(rng.uniform(-1.0, 1.0, (3, C_IN, 9, 8)))  # |x| > r = 0.8: the DAC clips
    cols = F.unfold(x, 3, padding=padding, stride=stride)  # (n, C·9, positions), torch's row order
    rows = cols.transpose(1, 2).reshape(-1, C_IN * 9).numpy()
    noise = draw_mvm_noise(rows.shape[0], layer, np.random.default_rng(11))
    ref = chip_analog_matmul(rows, layer, ro, profile, noise=noise)
    aged = torch_chip.AgedWeights(
        w_t=torch.from_numpy(ro.w_norm).double(),
        w_prog=torch.from_numpy(ro.w_norm).double(),  # w_prog: unused
        col_scale=torch.from_numpy(layer.col_scale).double(),
        tiles=layer.tiles,
        alpha=torch.from_numpy(ro.alpha(profile.gdc)).double(),
    )
    draws = torch_chip.MvmDraws([torch.from_numpy(a).double() for a in noise.draws])
    y = torch_chip.analog_conv2d(
        x,
        aged,
        layer.input_range,
        profile,
        draws,
        (3, 3),
        (stride, stride),
        (padding, padding),
        bias=torch.from_numpy(bias).double(),
    )
    n, _, h, w = y.shape
    assert (h, w) == ((9 + 2 * padding - 3) // stride + 1, (8 + 2 * padding - 3) // stride + 1)
    want = ref.reshape(n, h * w, C_OUT).transpose(0, 2, 1).reshape(n, C_OUT, h, w)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-9, atol=1e-9)


def _layer_and_ctx(mode: GradientMode, stride: int, dtype=torch.float64):
    torch.manual_seed(0)
    layer = StridedAnalogConv2d(C_IN, C_OUT, 3, stride=stride, padding=1, bias=True).to(dtype)
    layer.input_range.data.fill_(0.9)
    layer.learn_range = True
    layer.input_range.requires_grad_(True)
    # every perturbation class on, IR drop ×5 so that its error is far above rounding
    profile = get_profile("pcm-faulty", tile_rows=TILE_ROWS, ir_drop=5.0, d2d_sigma=0.05)
    ctx = hwa.HwaContext(
        hwa.HwaConfig(mode=mode),
        torch.Generator().manual_seed(1),
        schedule=hwa.ChipSchedule(profile_at=lambda s: profile, age_s=86400.0),
    )
    hwa.attach(layer, ctx)
    layer.train()
    x = torch.randn((4, C_IN, 7, 7), generator=torch.Generator().manual_seed(2), dtype=dtype).requires_grad_(True)
    return layer, ctx, x


def _run(layer, ctx, x, mode: GradientMode, unfolded: bool):
    """Forward (and, except under STE, backward) from one fixed generator state."""
    state = ctx.generator.get_state()
    np_state = ctx.np_rng.bit_generator.state
    if unfolded:
        object.__setattr__(layer, "_through_chip", _unfolded_layer(layer))
    try:
        ctx.adc_gates = {}
        y = layer(x)
    finally:
        layer.__dict__.pop("_through_chip", None)
        ctx.generator.set_state(state)
        ctx.np_rng.bit_generator.state = np_state
    gates = ctx.adc_gates.get(layer, [])
    ctx.adc_gates = None
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    grads = torch.autograd.grad((y * g).sum(), [layer.weight, layer.bias, layer.input_range, x], allow_unused=True)
    return y.detach(), grads, gates


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("mode", list(GradientMode))
def test_conv_layer_equals_the_unfolded_layer_in_every_gradient_mode(mode, stride):
    """Same generator state → the same chip, the same per-MVM draws and the same outputs as the
    unfolded path; in the gradient modes the same gradients (THROUGH_CHIP: the same ADC gates,
    reshaped to output layout). float64: only summation order differs (see the test above)."""
    layer, ctx, x = _layer_and_ctx(mode, stride)
    y_fast, g_fast, gates_fast = _run(layer, ctx, x, mode, unfolded=False)
    y_ref, g_ref, gates_ref = _run(layer, ctx, x, mode, unfolded=True)
    clean = layer._clean(layer._clip_input(x)).detach()
    assert float((y_ref - clean).norm() / clean.norm()) > 0.05  # the chip is far from the clean layer
    torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-10)
    for a, b in zip(g_fast, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert len(gates_fast) == len(gates_ref) == (2 if mode == GradientMode.THROUGH_CHIP else 0)
    for a, b in zip(gates_fast, gates_ref):
        n, c, h, w = a.shape
        torch.testing.assert_close(a.permute(0, 2, 3, 1).reshape(-1, c), b, rtol=1e-9, atol=1e-9)


def test_conv_layer_in_float32_differs_from_the_unfolded_layer_only_by_rare_adc_steps():
    """Training runs float32, where the convolution and the unfolded product round differently
    (~1e-7 relative). That moves an output across an ADC threshold only when it lies within
    ~1e-7·|y| of one, i.e. for a fraction ~1e-6 of outputs; any difference is one ADC step
    (2·bound/levels·α·r·s_col) and at most 1 % of outputs may differ (here 4·6·7·7 = 1176)."""
    layer, ctx, x = _layer_and_ctx(GradientMode.STE, 1, torch.float32)
    y_fast, _, _ = _run(layer, ctx, x, GradientMode.STE, unfolded=False)
    y_ref, _, _ = _run(layer, ctx, x, GradientMode.STE, unfolded=True)
    diff = (y_fast - y_ref).abs()
    profile = ctx.profile
    aged_scale = float(layer.weight.detach().reshape(C_OUT, -1).abs().max()) * 0.9  # s_col ≤ max|W|, r = 0.9
    step = 2 * profile.out_bound / profile.out_levels * aged_scale * 2.0  # α ≤ 2 at 1 d
    assert float(diff.max()) <= step
    assert float((diff > 1e-4 * y_ref.abs().max()).to(torch.float64).mean()) <= 0.01


@pytest.mark.slow  # 80 HWA training steps
def test_tiny_resnet_learns_through_the_convolution_path():
    """A few HWA steps (extended STE) of a tiny ResNet on 8×8 digits with 32-row tiles, so that
    most convolutions span several tiles cut inside a kernel: the loss on a fixed chip instance
    (seeded) drops. Untrained ≈ ln 10 = 2.30; seeded, hence deterministic: measured 2.34 → 0.72
    (80 steps, ~10 s)."""
    from models.data import load_split

    data = load_split("train")
    x, y = torch.from_numpy(data.x[:256]), torch.from_numpy(data.y[:256])
    torch.manual_seed(0)
    model = ResNet(widths=(8, 16), blocks=1)
    hwa.calibrate_input_ranges(model, x)
    profile = get_profile("pcm", tile_rows=TILE_ROWS)
    schedule = hwa.ChipSchedule(profile_at=lambda s: profile)
    assert any(len(range(0, m.weight[0].numel(), TILE_ROWS)) > 1 for _, m in hwa.analog_layers(model))

    def noisy_loss() -> float:
        ctx = hwa.HwaContext(hwa.HwaConfig(), torch.Generator().manual_seed(123), schedule=schedule)
        ctx.new_batch(1.0, 86400.0)
        hwa.attach(model, ctx)
        with torch.no_grad():
            loss = float(F.cross_entropy(model(x), y))
        return loss

    model.train()
    before = noisy_loss()
    ctx = hwa.HwaContext(hwa.HwaConfig(), torch.Generator().manual_seed(1), schedule=schedule)
    hwa.attach(model, ctx)
    opt = torch.optim.Adam(model.parameters(), lr=3e-2)
    gen = torch.Generator().manual_seed(0)
    for _ in range(80):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        ctx.new_batch(1.0)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = noisy_loss()
    hwa.attach(model, None)
    assert before > 2.0
    assert after < 0.5 * before, (before, after)
