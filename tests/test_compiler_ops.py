"""Compiler op coverage: grouped and depthwise Conv as one layer, ConvTranspose, shared
initializers and MatMul(W, x) (LSTM/GRU/RNN are in test_compiler_recurrent). Each op: the ideal
chip equals onnxruntime on the original model; the pcm chip equals the numpy reference of its
analog MVMs (chipsim.reference) with the same noise draws, or programs and runs at 1 s / 1 d / 1 y."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import CompileError, compile_model, program_onnx
from chipsim.cost.counts import count_chip
from chipsim.readout import read
from chipsim.reference import MvmNoise, analog_matmul
from chipsim.runtime import ChipRuntime
from tests import onnx_models as om
from tests.compiler_op_helpers import AGES, _model, _ort, _rel_err, _vi, recurrent_model

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def _im2col(x: np.ndarray, k: int, pad: int, stride: int = 1) -> np.ndarray:
    """(N, C, H, W) → (N·Ho·Wo, C·k·k), rows ordered (c, u, v) like a Conv weight flattened."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    cols = np.empty((n, ho, wo, c, k, k), x.dtype)
    for u in range(k):
        for v in range(k):
            cols[:, :, :, :, u, v] = xp[:, :, u : u + stride * ho : stride, v : v + stride * wo : stride].transpose(
                0, 2, 3, 1
            )
    return cols.reshape(n * ho * wo, c * k * k)


def _pixels(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) → (N·H·W, C): one MVM per pixel."""
    return a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1])


def _check_adc_level_agreement(got, want, layer, readout, profile):
    """ONNX (float32) and the reference (float64) agree except where rounding lands a value on the
    other side of a DAC/ADC step: such an element differs by about one ADC step times its scale
    (α·r·s_col, per tile); at ~1e-7 relative float error that happens for ~1e-5 of the outputs,
    so 1 % of elements is a generous bound on their count."""
    diff = np.abs(got - want)
    adc_step = 2 * profile.out_bound / profile.out_levels
    scale = adc_step * float(readout.alpha(profile.gdc).max()) * layer.input_range * layer.col_scale.max()
    assert diff.max() <= 1.01 * scale * len(layer.tiles)
    rel_ok = diff <= 1e-5 * np.maximum(np.abs(want), np.abs(want).max())
    assert rel_ok.mean() >= 0.99


# ----------------------------------------------------------------------------- grouped Conv
def grouped_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(8, 16, 3, padding=1, groups=4),
        torch.nn.ReLU(),
        torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
        torch.nn.ReLU(),  # depthwise
        torch.nn.Conv2d(16, 32, 3, stride=2, groups=2, bias=False),
    )


@pytest.mark.parametrize("tile_rows", [512, 20], ids=["one-tile", "channel-slices-of-every-group"])
def test_grouped_and_depthwise_conv_are_one_layer_equal_to_onnxruntime(tile_rows):
    x = np.random.default_rng(0).standard_normal((3, 8, 9, 9)).astype(np.float32) * 2
    model = om.export(grouped_net(), torch.from_numpy(x))
    chip = program_onnx(model, get_profile("ideal", tile_rows=tile_rows), seed=0)
    # One layer per node; its devices are the node's weights only (no cross-group devices).
    assert len(chip.layers) == 3
    assert [layer.weight.shape for layer in chip.layers] == [(2 * 9, 16), (1 * 9, 16), (8 * 9, 32)]
    assert chip.n_devices == 2 * (16 * 2 * 9 + 16 * 9 + 32 * 8 * 9)
    if tile_rows == 20:  # 72 rows of the last layer: tiles of 2 channels (18 rows) of each group
        assert chip.layers[2].tiles == [(0, 18), (18, 36), (36, 54), (54, 72)]
    rt = ChipRuntime(chip)
    for age in AGES:
        assert _rel_err(rt.run(x, age_s=age, seed=0), _ort(model, {"x": x})) <= 1e-5
    rt = ChipRuntime(program_onnx(model, get_profile("pcm", tile_rows=tile_rows), seed=0))
    outs = [rt.run(x, age_s=age, seed=0)[0] for age in AGES]
    assert all(o.shape == (3, 32, 4, 4) and np.all(np.isfinite(o)) for o in outs)
    assert not np.array_equal(outs[0], outs[2])


@pytest.mark.parametrize("tile_rows", [512, 20], ids=["one-tile", "two-tiles"])
def test_grouped_conv_on_pcm_equals_numpy_reference_per_group(tile_rows):
    """Each group's output columns are the reference MVM of its own input channels through the
    layer (the periphery is per column: DAC, IR drop, noise, ADC, GDC per tile)."""
    groups, cin, cout, hw = 4, 16, 8, 5
    rng = np.random.default_rng(3)
    w = rng.standard_normal((cout, cin // groups, 3, 3)).astype(np.float32) * 0.3
    model = _model(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], group=groups)],
        [_vi("x", ["N", cin, hw, hw])],
        [_vi("y", ["N", cout, hw, hw])],
        [numpy_helper.from_array(w, "w")],
    )
    profile = get_profile("pcm", tile_rows=tile_rows)
    chip = program_onnx(model, profile, seed=11)
    (layer,) = chip.layers
    assert layer.weight.shape == (4 * 9, cout) and len(layer.tiles) == (1 if tile_rows == 512 else 2)
    rt = ChipRuntime(chip)
    x = rng.uniform(-1.2, 1.2, (3, cin, hw, hw)).astype(np.float32)
    noise = rt.draw_noise(x, np.random.default_rng(9))
    got = rt.run(x, age_s=86400.0, read_seed=2, noise=noise)[0]
    readout = read(chip, 86400.0, read_seed=2).layers[0]
    draws = MvmNoise([_pixels(noise[rt.plans[0].input_names(k)["noise"]]) for k in range(len(layer.tiles))])
    want = np.empty_like(got)
    cg, og = cin // groups, cout // groups
    for g in range(groups):
        y = analog_matmul(_im2col(x[:, g * cg : (g + 1) * cg], 3, 1), layer, readout, profile, noise=draws, bias=False)
        want[:, g * og : (g + 1) * og] = y.reshape(3, hw, hw, cout).transpose(0, 3, 1, 2)[:, g * og : (g + 1) * og]
    _check_adc_level_agreement(got, want, layer, readout, profile)


@pytest.mark.slow
def test_mobilenet_v2_programs_as_53_layers_and_runs():
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    model = om.export(om.mobilenet_v2(), torch.from_numpy(x))
    compiled = compile_model(model, get_profile("ideal"))
    # 52 Conv (17 depthwise) + 1 Gemm, as torchvision's definition has.
    assert compiled.summary()["kinds"] == {"conv": 52, "gemm": 1}
    assert compiled.summary()["weights"] == sum(
        t.size
        for t in (numpy_helper.to_array(i) for i in onnx.load_from_string(model).graph.initializer)
        if t.ndim >= 2
    )
    chip = program_onnx(model, get_profile("ideal"), seed=0)
    assert _rel_err(ChipRuntime(chip).run(x, age_s=0.0, seed=0), _ort(model, {"x": x})) <= 1e-5
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0))
    for age in AGES:
        (y,) = rt.run(x, age_s=age, seed=0)
        assert y.shape == (2, 1000) and np.all(np.isfinite(y))


# ----------------------------------------------------------------------------- ConvTranspose
def convtranspose_model(cin=4, cout=6, k=(3, 3), hw=(5, 6), group=1, bias=True, dynamic_hw=False, **attrs):
    """One ConvTranspose; ``dynamic_hw``: spatial input sizes symbolic in the graph (the example
    input has ``hw``). Returns (model, x, w)."""
    rng = np.random.default_rng(2)
    w = rng.standard_normal((cin, cout // group, *k)).astype(np.float32) * 0.4
    inits, ins = [numpy_helper.from_array(w, "w")], ["x", "w"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(cout).astype(np.float32), "b"))
        ins.append("b")
    out = _vi("y", ["N", cout] + [f"s{i}" for i in range(len(hw))])
    model = _model(
        [helper.make_node("ConvTranspose", ins, ["y"], name="up", group=group, **attrs)],
        [_vi("x", ["N", cin, *([f"h{i}" for i in range(len(hw))] if dynamic_hw else hw)])],
        [out],
        inits,
    )
    return model, rng.standard_normal((2, cin, *hw)).astype(np.float32), w


CONV_TRANSPOSE_CASES = {
    "plain": {},
    "stride": dict(strides=[2, 2]),
    "stride-asymmetric-pads": dict(strides=[2, 3], pads=[1, 0, 2, 1]),
    "output-padding": dict(strides=[2, 2], output_padding=[1, 1]),
    "dilation": dict(strides=[3, 2], dilations=[2, 1], pads=[2, 1, 0, 1], output_padding=[1, 0]),
    "groups": dict(group=2, strides=[2, 2], pads=[1, 1, 1, 1]),
    "depthwise": dict(group=8, cin=8, cout=8, strides=[2, 2]),
    "dcgan-4x4": dict(k=(4, 4), strides=[2, 2], pads=[1, 1, 1, 1]),
    "pads-beyond-kernel": dict(pads=[3, 3, 3, 3], strides=[2, 2]),
    "output-shape": dict(strides=[2, 2], output_shape=[11, 12]),
    "same-upper": dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    "same-lower": dict(strides=[2, 2], auto_pad="SAME_LOWER"),
    "1d": dict(k=(3,), hw=(7,), strides=[2], pads=[1, 0]),
    "3d": dict(k=(2, 2, 2), hw=(3, 4, 2), strides=[2, 1, 2]),
    "no-bias-two-tiles": dict(bias=False, cin=80, cout=4, strides=[2, 2]),
}


@pytest.mark.parametrize("attrs", CONV_TRANSPOSE_CASES.values(), ids=CONV_TRANSPOSE_CASES.keys())
def test_conv_transpose_on_the_ideal_chip_equals_onnxruntime(attrs):
    model, x, w = convtranspose_model(**attrs)
    chip = program_onnx(model, get_profile("ideal"), seed=0)
    (layer,) = chip.layers
    assert layer.weight.size == w.size and layer.meta["kind"] == "conv_transpose"
    got = ChipRuntime(chip).run(x, age_s=0.0, seed=0)
    assert _rel_err(got, _ort(model, {"x": x})) <= 1e-5


SIZE_FREE_PADS = [c for c in CONV_TRANSPOSE_CASES if c not in ("output-shape", "same-upper", "same-lower")]


@pytest.mark.parametrize("case", SIZE_FREE_PADS)
def test_conv_transpose_with_symbolic_spatial_sizes_runs_at_any_size(case):
    """Spatial sizes symbolic in the export: the zero-upsampling reads them at run time, so the
    ideal chip equals onnxruntime at several sizes and pcm draws noise for each request's pixels."""
    attrs = CONV_TRANSPOSE_CASES[case]
    model, _, _ = convtranspose_model(**attrs, dynamic_hw=True)
    rt = ChipRuntime(program_onnx(model, get_profile("ideal"), seed=0))
    cin = attrs.get("cin", 4)
    spatial = len(attrs.get("hw", (5, 6)))
    for size in (4, 7):
        x = np.random.default_rng(size).standard_normal((2, cin, *[size + i for i in range(spatial)]))
        x = x.astype(np.float32)
        assert _rel_err(rt.run(x, age_s=0.0), _ort(model, {"x": x})) <= 1e-5
    pcm = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0))
    (want,) = _ort(model, {"x": x})
    assert [s for _, s in pcm.noise_shapes(x)] == [want.shape] * len(pcm.plans[0].tiles)
    assert pcm.run(x, age_s=86400.0, seed=0)[0].shape == want.shape


def test_conv_transpose_with_symbolic_sizes_and_size_dependent_pads_is_refused():
    for attrs in (dict(strides=[2, 2], output_shape=[11, 12]), dict(strides=[2, 2], auto_pad="SAME_UPPER")):
        model, _, _ = convtranspose_model(**attrs, dynamic_hw=True)
        with pytest.raises(CompileError, match="symbolic spatial input sizes"):
            compile_model(model, get_profile("ideal"))


def test_conv_transpose_on_pcm_is_one_mvm_per_output_pixel():
    """The reference: zero-upsample the input, pad by k−1−p, and run the flipped, transposed kernel
    as a stride-1 Conv through chipsim.reference — every output pixel one MVM of the layer."""
    model, x, w = convtranspose_model(cin=4, cout=6, strides=[2, 2], pads=[1, 1, 1, 1], bias=False)
    profile = get_profile("pcm")
    chip = program_onnx(model, profile, seed=5)
    (layer,) = chip.layers
    np.testing.assert_array_equal(layer.weight, w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3).reshape(6, -1).T)
    rt = ChipRuntime(chip)
    noise = rt.draw_noise(x, np.random.default_rng(4))
    got = rt.run(x, age_s=3600.0, noise=noise)[0]
    up = np.zeros((2, 4, 9, 11), np.float32)
    up[:, :, ::2, ::2] = x  # 5×6 → 9×11
    cols = _im2col(up, 3, 3 - 1 - 1)  # (k−1)·d − p = 1
    readout = read(chip, 3600.0).layers[0]
    want = analog_matmul(
        cols, layer, readout, profile, bias=False, noise=MvmNoise([_pixels(noise[rt.plans[0].input_names(0)["noise"]])])
    )
    want = want.reshape(2, 9, 11, 6).transpose(0, 3, 1, 2)
    assert got.shape == want.shape == _ort(model, {"x": x})[0].shape
    _check_adc_level_agreement(got, want, layer, readout, profile)
    outs = [rt.run(x, age_s=age, seed=0)[0] for age in AGES]
    assert all(o.shape == got.shape and np.all(np.isfinite(o)) for o in outs) and not np.array_equal(outs[0], outs[2])


# ----------------------------------------------------------------------------- shared weights
def test_a_weight_used_twice_is_one_set_of_devices_read_with_independent_noise():
    w = np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32)
    model = _model(
        [
            helper.make_node("MatMul", ["x", "w"], ["a"], name="first"),
            helper.make_node("MatMul", ["x", "w"], ["b"], name="second"),
            helper.make_node("Gemm", ["x", "wt"], ["c"], name="gemm", transB=1),
        ],
        [_vi("x", ["N", 16])],
        [_vi(n, ["N", 8]) for n in "abc"],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(w.T.copy(), "wt")],
    )
    x = np.random.default_rng(1).uniform(-1, 1, (32, 16)).astype(np.float32)
    compiled = compile_model(model, get_profile("pcm"))
    assert [p.n_reads for p in compiled.plans] == [2, 1]  # w twice; wt is another initializer
    assert compiled.summary()["devices"] == 2 * 2 * w.size
    ideal = ChipRuntime(program_onnx(model, get_profile("ideal"), seed=0)).run(x, age_s=0.0)
    assert _rel_err(ideal, _ort(model, {"x": x})) <= 1e-5
    # Weight effects only (drift, programming and read noise): both reads see the same devices.
    weights_only = get_profile(
        "pcm", w_noise=0.0, out_noise=0.0, ir_drop=0.0, in_levels=0, out_levels=0, out_bound=0.0, in_clip=False
    )
    a, b, _ = ChipRuntime(program_onnx(model, weights_only, seed=0)).run(x, age_s=86400.0)
    np.testing.assert_array_equal(a, b)
    # Full pcm: the same devices, but every read its own per-MVM noise.
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0))
    assert all(np.all(np.isfinite(y)) for age in AGES for y in rt.run(x, age_s=age, seed=0))
    a, b, _ = rt.run(x, age_s=86400.0, seed=3)
    assert not np.array_equal(a, b)
    diff = (a - b).ravel()
    # Two independent draws of the same σ: their difference has σ√2 and mean 0 (512 samples:
    # the mean lies within 4 standard errors).
    assert abs(diff.mean()) < 4 * diff.std() / np.sqrt(diff.size)


def test_unrolled_lstm_cell_programs_its_weights_once():
    """torch.nn.LSTMCell in a loop exports one Gemm pair per step, all on the same initializers."""

    class Loop(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.cell = torch.nn.LSTMCell(28, 64)

        def forward(self, x):
            h = c = torch.zeros(x.shape[0], 64)
            for t in range(x.shape[1]):
                h, c = self.cell(x[:, t], (h, c))
            return h

    x = np.random.default_rng(0).standard_normal((3, 10, 28)).astype(np.float32)
    model = om.export(Loop(), torch.from_numpy(x))
    compiled = compile_model(model, get_profile("pcm"))
    params = 4 * 64 * (28 + 64)
    assert compiled.summary()["analog_layers"] == 2 and compiled.summary()["devices"] == 2 * params
    assert compiled.summary()["reads"] >= 19  # W_ih 10 times, W_hh 9-10 times (torch may fold h = 0)
    chip = program_onnx(model, get_profile("ideal"), seed=0)
    assert _rel_err(ChipRuntime(chip).run(x, age_s=0.0), _ort(model, {"x": x})) <= 1e-5


# ----------------------------------------------------------------------------- MatMul(W, x), summary
def test_constant_first_matmul_is_mapped_transposed_and_digital_parameters_are_counted():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 16)).astype(np.float32)  # y = W · x, x [N, 16, T]
    table = rng.standard_normal((10, 16)).astype(np.float32)  # an embedding table (digital)
    bias = rng.standard_normal((6, 1)).astype(np.float32)
    model = _model(
        [
            helper.make_node("MatMul", ["w", "x"], ["wx"], name="left"),
            helper.make_node("Add", ["wx", "bias"], ["y"]),
            helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
        ],
        [_vi("x", ["N", 16, 5]), _vi("ids", ["N", 3], TensorProto.INT64)],
        [_vi("y", ["N", 6, 5]), _vi("e", ["N", 3, 16])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(bias, "bias"),
        ],
    )
    compiled = compile_model(model, get_profile("pcm"))
    (plan,) = compiled.plans
    assert plan.kind == "matmul_left" and compiled.specs[0].weight.shape == (16, 6)
    summary = compiled.summary()
    assert summary["digital_parameters"] == table.size + bias.size
    assert summary["digital_weight_nodes"] == [{"node": "embed", "op": "Gather", "parameters": table.size}]
    feeds = {"x": rng.standard_normal((4, 16, 5)).astype(np.float32), "ids": rng.integers(0, 10, (4, 3))}
    chip = program_onnx(model, get_profile("ideal"), seed=0)
    assert chip.meta["digital_parameters"] == table.size + bias.size
    assert _rel_err(ChipRuntime(chip).run(feeds, age_s=0.0), _ort(model, feeds)) <= 1e-5
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0))
    for age in AGES:
        y, _ = rt.run(feeds, age_s=age, seed=0)
        assert y.shape == (4, 6, 5) and np.all(np.isfinite(y))


def test_cost_counts_follow_the_new_layer_kinds():
    """One row per layer read: a shared weight at each node, an LSTM's W and R (R: T − 1 reads
    without an initial state), a ConvTranspose's output pixels."""
    model, feeds = recurrent_model("LSTM", T=5, N=3, layout=1)
    counts = count_chip(program_onnx(model, get_profile("pcm"), seed=0), batch=3)
    w_row, r_row = counts.layers
    assert (w_row.kind, w_row.rows, w_row.cols, w_row.mvms) == ("lstm", 4, 24, 3 * 5)
    assert (r_row.rows, r_row.cols, r_row.mvms) == (6, 24, 3 * 4)
    model, _, _ = convtranspose_model(cin=4, cout=6, strides=[2, 2], group=2)
    (row,) = count_chip(program_onnx(model, get_profile("pcm"), seed=0), batch=1).layers
    # 11×13 output pixels, each one MVM of 2 groups × 2 channels × 9 rows; 6 columns.
    assert (row.kind, row.rows, row.cols, row.mvms, row.weights) == ("conv_transpose", 36, 6, 11 * 13, 4 * 3 * 9)
