"""The ``inputs`` binding's Conv → batched MatMul rewrite (chipsim.compiler.conv_matmul) against
onnxruntime's own Conv on the same graph: every stride, dilation, padding, group and pixel count
it rewrites gives the Conv's outputs (float32 sums in another order: |Δ| ≤ 1e-4 of values of
order 1-10)."""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.compiler.conv_matmul import _live_range, conv_inputs_as_matmul
from chipsim.ort_session import cpu_session
from chipsim.runtime import ChipRuntime
from tests import onnx_models as om

DAY = 86400.0


def _conv_graph(c_in, hw, m, k, groups, stride, dilation, pads, bias) -> onnx.ModelProto:
    inputs = [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c_in, *hw]),
        helper.make_tensor_value_info("w", TensorProto.FLOAT, [m, c_in // groups, *k]),
    ]
    names, inits = ["x", "w"], []
    if bias:
        inits.append(numpy_helper.from_array(np.linspace(-1, 1, m).astype(np.float32), "b"))
        names.append("b")
    node = helper.make_node(
        "Conv", names, ["y"], name="conv", group=groups, strides=stride, dilations=dilation, pads=pads
    )
    g = helper.make_graph(
        [node],
        "g",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m, "Ho", "Wo"])],
        initializer=inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


CASES = [
    # c_in, (H, W), M, kernel, groups, strides, dilations, pads, bias
    (8, (1, 1), 12, (3, 3), 1, (1, 1), (1, 1), (1, 1, 1, 1), False),  # centre tap only
    (8, (2, 2), 12, (3, 3), 1, (1, 1), (1, 1), (1, 1, 1, 1), True),  # 2x2 pixels, all 9 taps
    (8, (2, 2), 12, (3, 3), 1, (2, 2), (1, 1), (1, 1, 1, 1), False),  # stride 2 → 1x1: 4 taps
    (16, (3, 3), 8, (3, 3), 4, (2, 2), (1, 1), (1, 1, 1, 1), True),  # groups (the tile's stacked parts)
    (8, (2, 2), 8, (3, 3), 8, (1, 1), (1, 1), (1, 1, 1, 1), False),  # depthwise: Σ taps ⊙ weights
    (6, (1, 1), 6, (3, 3), 6, (1, 1), (1, 1), (1, 1, 1, 1), True),  # depthwise, centre tap, bias
    (6, (1, 1), 6, (3, 3), 6, (1, 1), (1, 1), (1, 1, 1, 1), False),  # depthwise, one tap, no bias
    (8, (2, 2), 12, (3, 3), 1, (2, 2), (1, 1), (1, 1, 1, 1), True),  # one pixel, one group: Gemm + bias
    (6, (2, 3), 10, (1, 1), 2, (1, 1), (1, 1), (0, 0, 0, 0), False),  # 1x1 kernel, 2x3 pixels
    (4, (5, 5), 6, (3, 3), 1, (2, 2), (2, 2), (0, 1, 2, 0), True),  # dilation, uneven pads
    (4, (1, 2), 6, (3, 5), 2, (1, 3), (1, 1), (1, 2, 1, 2), False),  # non-square kernel and stride
]


@pytest.mark.parametrize("case", CASES)
def test_rewritten_conv_equals_onnxruntime_conv(case):
    rng = np.random.default_rng(0)
    model = _conv_graph(*case)
    c_in, hw, m, k, groups = case[:5]
    feeds = {
        "x": rng.standard_normal((5, c_in, *hw)).astype(np.float32),
        "w": rng.standard_normal((m, c_in // groups, *k)).astype(np.float32),
    }
    want = cpu_session(model.SerializeToString(), 1).run(None, feeds)[0]
    rewritten = onnx.ModelProto()
    rewritten.CopyFrom(model)
    taps = conv_inputs_as_matmul(rewritten, max_pixels=8)
    assert list(taps) == ["w"]
    feeds["w"] = taps["w"](feeds["w"])
    consts = {t.name for t in rewritten.graph.initializer}
    assert all(n.input[1] in consts for n in rewritten.graph.node if n.op_type == "Conv")  # patches only
    onnx.checker.check_model(rewritten)
    onnx.shape_inference.infer_shapes(rewritten, strict_mode=True)
    got = cpu_session(rewritten.SerializeToString(), 1).run(None, feeds)[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_only_small_outputs_with_input_weights_are_rewritten():
    small = _conv_graph(8, (2, 2), 4, (3, 3), 1, (1, 1), (1, 1), (1, 1, 1, 1), False)
    assert conv_inputs_as_matmul(small, max_pixels=3) == {}  # 4 output pixels > 3
    const_w = _conv_graph(8, (1, 1), 4, (3, 3), 1, (1, 1), (1, 1), (1, 1, 1, 1), False)
    w = const_w.graph.input.pop()  # the weight becomes a constant: onnxruntime's NCHWc path
    const_w.graph.initializer.append(numpy_helper.from_array(np.ones((4, 8, 3, 3), np.float32), w.name))
    assert conv_inputs_as_matmul(const_w) == {}
    dynamic = _conv_graph(8, ("H", "W"), 4, (3, 3), 1, (1, 1), (1, 1), (1, 1, 1, 1), False)
    assert conv_inputs_as_matmul(dynamic) == {}  # pixels unknown at build time


def test_live_taps_by_enumeration():
    # brute force: a tap is live iff some output pixel reads an in-range input through it
    for size, k, stride, dil, pad in itertools.product([1, 2, 3], [1, 3], [1, 2], [1, 2], [0, 1, 2]):
        out = (size + 2 * pad - dil * (k - 1) - 1) // stride + 1
        if out < 1:
            continue
        live = [i for i in range(k) for o in range(out) if 0 <= o * stride - pad + i * dil < size]
        got = _live_range(size, out, k, stride, dil, pad)
        assert got == ((min(live), max(live)) if live else None)


def test_a_shared_weight_input_is_not_rewritten():
    # two Convs read one weight input: each would want its own taps, so neither is rewritten
    model = _conv_graph(8, (1, 1), 4, (3, 3), 1, (1, 1), (1, 1), (1, 1, 1, 1), False)
    model.graph.node.append(helper.make_node("Conv", ["x", "w"], ["y2"], name="conv2", pads=[1, 1, 1, 1]))
    model.graph.output.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["N", 4, 1, 1]))
    assert conv_inputs_as_matmul(model) == {}


@pytest.mark.parametrize("hw", [1, 2])
def test_a_runtime_with_input_weights_runs_small_convs_as_matmuls(hw):
    # 64 channels x 3x3 = 576 rows: two tiles; on 1x1 pixels the session reads the centre taps only
    model, _, _ = om.single_layer("conv", 0, 24, seed=3, cin=64, k=3, hw=hw)
    chip = program_onnx(model, get_profile("pcm"), seed=11, calibration=None)
    x = np.random.default_rng(5).uniform(-1.2, 1.2, (3, 64, hw, hw)).astype(np.float32)
    fed = ChipRuntime(chip, threads=1, binding="inputs")
    got = fed.run(x, DAY, read_seed=2, seed=7)[0]
    graph = fed._session_graph()
    weight_convs = [n for n in graph.model.graph.node if n.op_type == "Conv" and n.input[1].startswith("chip/")]
    # every tile's four products (w, r, a, v on 'pcm') are MatMuls now
    assert weight_convs == [] and len(graph.weight_taps) == 4 * len(chip.meta["plans"][0]["tiles"])
    entry = fed._entry(DAY, 2)
    feeds = fed._static_feeds(entry, fed.gdc_mode(True))
    kernel = (1, 1) if hw == 1 else (3, 3)
    assert {feeds[name].shape[2:] for name in graph.weight_taps} == {kernel}
    # the centre taps are copies made once per read-out, and the cache is charged for them
    full = sum(a.nbytes for a in entry.weights.values())
    copies = sum(feeds[name].nbytes for name in graph.weight_taps) if hw == 1 else 0
    assert entry.weight_bytes == full + copies
    want = ChipRuntime(chip, threads=1).run(x, DAY, read_seed=2, seed=7)[0]  # embedded: onnxruntime's Conv
    # same read-out and noise, sums in another order: float32 rounding can move an output across
    # an ADC step (one step x alpha*r*s_col), rarely (as in test_lean_binding)
    close = np.isclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert close.mean() >= 0.99


def test_a_depthwise_conv_is_fed_tap_major_and_summed_once():
    # 8 channels on 2x2 pixels, 3x3 taps all live: the weights come as [T, M, Ho, Wo], one Split
    # hands each tap its [1, M, Ho, Wo] (broadcast along the batch only) and one Sum adds the terms
    model = _conv_graph(8, (2, 2), 8, (3, 3), 8, (1, 1), (1, 1), (1, 1, 1, 1), True)
    feeds = conv_inputs_as_matmul(model)
    feed = feeds["w"]
    declared = [d.dim_value for d in model.graph.input[1].type.tensor_type.shape.dim]
    assert declared == [9, 8, 2, 2]
    w = np.arange(8 * 9, dtype=np.float32).reshape(8, 1, 3, 3)
    fed = feed(w)
    assert fed.shape == (9, 8, 2, 2) and fed.flags.c_contiguous
    np.testing.assert_array_equal(fed[4, :, 1, 0], w[:, 0, 1, 1])  # tap (1, 1) of every channel
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Split") == 1 and ops.count("Sum") == 1 and ops.count("Mul") == 9
    assert "Gather" not in ops and "Add" not in ops and "Conv" not in ops


def _conv_then_matmul() -> bytes:
    """Conv 4→8 channels on 6×6 pixels (left a Conv: 36 > 4 pixels), Flatten, MatMul 288→300."""
    rng = np.random.default_rng(4)
    w = numpy_helper.from_array((rng.standard_normal((8, 4, 3, 3)) * 0.3).astype(np.float32), "w")
    m = numpy_helper.from_array((rng.standard_normal((288, 300)) * 0.05).astype(np.float32), "m")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "m"], ["y"], name="mm"),
    ]
    g = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 300])],
        initializer=[w, m],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_a_large_chip_embeds_the_weights_of_its_remaining_convs_per_read_out():
    # total weight inputs ~1.4 MB > 100 kB: bound as inputs; its Conv's (4.6 kB) are embedded
    # per read-out, as onnxruntime runs a Conv with fed weights image by image
    chip = program_onnx(_conv_then_matmul(), get_profile("pcm"), seed=3, calibration=None)
    x = np.random.default_rng(1).uniform(0, 1, (5, 4, 6, 6)).astype(np.float32)
    rt = ChipRuntime(chip, threads=1, initializers_max_bytes=100_000)
    assert rt.binding == "inputs"
    got = rt.run(x, DAY, read_seed=1, seed=9)[0]
    entry = rt._entry(DAY, 1)
    conv_weights = {n.input[1] for n in rt._session_graph().model.graph.node if n.op_type == "Conv"}
    assert conv_weights and entry.partial and entry.session is not None
    session_inputs = {i.name for i in entry.session.get_inputs()}
    assert not conv_weights & session_inputs and not conv_weights & set(entry.fed_weights)
    assert entry.embedded_bytes == sum(entry.weights[k].nbytes for k in conv_weights)
    assert rt._session is None  # the all-fed session is never built
    assert rt.run(x, DAY, read_seed=1, seed=9)[0].tobytes() == got.tobytes()  # seeded: bit-identical
    # the same chip, request and noise with every weight fed: the same outputs up to float
    # summation order (onnxruntime's constant-weight Conv adds in another order)
    fed = ChipRuntime(chip, threads=1, initializers_max_bytes=100_000, embed_convs=False)
    want = fed.run(x, DAY, read_seed=1, seed=9)[0]
    assert not fed._entry(DAY, 1).partial and fed._entry(DAY, 1).session is None
    close = np.isclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
    assert close.mean() >= 0.99
    # asked for 'inputs' (one session for every age): nothing is embedded
    asked = ChipRuntime(chip, threads=1, binding="inputs")
    asked.run(x, DAY)
    assert asked._entry(DAY, 0).session is None and not asked._entry(DAY, 0).partial
    # Conv weights over the bound: nothing is embedded
    small = ChipRuntime(chip, threads=1, initializers_max_bytes=1000)
    small.run(x, DAY)
    assert small.binding == "inputs" and small._entry(DAY, 0).session is None
