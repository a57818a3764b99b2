"""The ONNX runtime against the original model (ideal chip) and against the numpy reference
analog MVM (full pcm periphery), plus its error handling and caching."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import GRAPH_FORMAT, CompileError, compile_model, program_onnx
from chipsim.readout import read
from chipsim.reference import MvmNoise, analog_matmul
from chipsim.runtime import ChipRuntime, InputError
from tests import onnx_models as om

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


def _digital(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize(
    "make, shape",
    [(om.mlp, (7, 64)), (om.cnn, (5, 3, 8, 8)), (om.transformer, (4, 8, 8))],
    ids=["mlp", "cnn-stride-pad-dilation-groups", "transformer"],
)
def test_ideal_chip_equals_original_model(make, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32) * 2  # beyond ±1: the ideal DAC must not clip
    model = om.export(make(), torch.from_numpy(x))
    chip = program_onnx(model, get_profile("ideal"), seed=0)
    rt = ChipRuntime(chip)
    want = _digital(model, x)
    for age in (0.0, 3600.0, 10 * 365 * 86400.0):
        got = rt.run(x, age_s=age, seed=0)[0]
        # float32 rounding of x/r·r and of per-column scale products: ~1e-7 relative.
        assert np.max(np.abs(got - want)) / np.max(np.abs(want)) <= 1e-5


def test_attention_matmuls_stay_digital():
    model = om.export(om.transformer(), torch.zeros(2, 8, 8))
    compiled = compile_model(model, get_profile("pcm"))
    kinds = {p.kind for p in compiled.plans}
    g = onnx.load_from_string(model)
    consts = {t.name for t in g.graph.initializer}
    act_matmuls = [n for n in g.graph.node if n.op_type == "MatMul" and n.input[1] not in consts]
    assert act_matmuls, "the exported encoder should contain activation×activation MatMuls"
    # Those nodes survive unchanged in the compiled graph; every mapped layer has a constant weight.
    out = onnx.load_from_string(compiled.graph)
    survived = {n.name for n in out.graph.node}
    assert all(n.name in survived for n in act_matmuls)
    assert all(p.weight_name in consts for p in compiled.plans) and kinds <= {"matmul", "gemm"}


def _im2col(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """(N, C, H, W) → (N·H·W, C·k·k) for stride 1; rows ordered (c, u, v) like W.reshape(M, -1)."""
    n, c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    cols = np.empty((n, h, w, c, k, k), x.dtype)
    for u in range(k):
        for v in range(k):
            cols[:, :, :, :, u, v] = xp[:, :, u : u + h, v : v + w].transpose(0, 2, 3, 1)
    return cols.reshape(n * h * w, c * k * k)


@pytest.mark.parametrize(
    "op, rows, cols, kw",
    [("matmul", 1100, 24, {}), ("gemm", 300, 17, {}), ("conv", 0, 10, {"cin": 64, "k": 3, "hw": 5})],
    ids=["matmul-3-tiles", "gemm-transB", "conv-576-rows-2-tiles"],
)
@pytest.mark.parametrize("binding", ["inputs", "initializers"])
def test_pcm_layer_equals_numpy_reference(op, rows, cols, kw, binding):
    model, matrix, bias = om.single_layer(op, rows, cols, seed=3, **kw)
    profile = get_profile("pcm")
    rng = np.random.default_rng(5)
    if op == "conv":
        x = rng.uniform(-1.2, 1.2, (3, kw["cin"], kw["hw"], kw["hw"])).astype(np.float32)
    else:
        x = rng.uniform(-1.2, 1.2, (16, rows)).astype(np.float32)
    chip = program_onnx(model, profile, seed=11, calibration=None)
    layer = chip.layers[0]
    np.testing.assert_array_equal(layer.weight, matrix)
    assert len(layer.tiles) >= 2 or op == "gemm"
    rt = ChipRuntime(chip, binding=binding)
    age = 86400.0
    batch = x.shape[0]
    noise = rt.draw_noise(x, np.random.default_rng(9))
    got = rt.run(x, age_s=age, read_seed=2, noise=noise)[0]
    readout = read(chip, age, read_seed=2).layers[0]
    plan = rt.plans[0]
    names = [plan.input_names(k) for k in range(len(plan.tiles))]
    if op == "conv":
        hw = kw["hw"]
        xin = _im2col(x, 3, 1)
        to_rows = lambda a: a.reshape(batch, cols, hw, hw).transpose(0, 2, 3, 1).reshape(-1, cols)  # noqa: E731
        want = (
            analog_matmul(
                xin, layer, readout, profile, noise=MvmNoise([to_rows(noise[n["noise"]]) for n in names]), bias=False
            )
            + bias
        )
        want = want.reshape(batch, hw, hw, cols).transpose(0, 3, 1, 2)
    else:
        want = analog_matmul(
            x,
            layer,
            readout,
            profile,
            noise=MvmNoise([noise[n["noise"]].reshape(batch, cols) for n in names]),
            bias=False,
        )
        if bias is not None:
            want = want + bias
    # Elements agree to float32 precision except where float32 (ONNX) vs float64 (reference)
    # rounding lands a value on the other side of a DAC or ADC step. Such an element differs by
    # about one ADC step times its digital scale (α·r·s_col) — or by a DAC step propagated
    # through one weight, which is smaller. We bound both the size and the count.
    diff = np.abs(got - want)
    rel_ok = diff <= 1e-5 * np.maximum(np.abs(want), np.abs(want).max())
    adc_step = 2 * profile.out_bound / profile.out_levels
    alpha_max = float(readout.alpha(profile.gdc).max())
    scale = adc_step * alpha_max * layer.input_range * layer.col_scale.max() * len(layer.tiles)
    assert diff.max() <= 1.01 * scale, "a mismatch larger than one ADC step per tile"
    # With ~1e-7 relative float error and a step of ~0.08, a value lands within rounding distance of
    # a step boundary with probability ~1e-5 per MVM output; 1 % of elements is a generous bound.
    assert np.mean(~rel_ok) <= 0.01, f"{np.sum(~rel_ok)} of {diff.size} elements differ by more than rounding"


def test_accuracy_kept_on_ideal_and_falls_with_age_on_pcm():
    model, x, y, x_train = om.digits_mlp()
    acc = lambda out: float(np.mean(out.argmax(1) == y))  # noqa: E731
    fp = acc(_digital(model, x))
    assert fp > 0.9
    ideal = ChipRuntime(program_onnx(model, get_profile("ideal"), seed=0))
    assert acc(ideal.run(x, age_s=1e8, seed=0)[0]) == fp
    ages = [1.0, 86400.0, 10 * 365 * 86400.0]
    means = []
    for age in ages:
        # Average over 4 chip instances so "monotonic on average" is not decided by one draw.
        # DAC ranges calibrated on training data (uncalibrated, the ADC saturates at age 0 and
        # drift *raises* accuracy by shrinking outputs back into range).
        accs = [
            acc(
                ChipRuntime(program_onnx(model, get_profile("pcm"), seed=s, calibration=x_train)).run(
                    x, age_s=age, gdc=False, seed=0
                )[0]
            )
            for s in range(4)
        ]
        means.append(np.mean(accs))
    assert means[0] >= means[1] >= means[2] and means[0] > means[2] + 0.02, means  # seen: .971, .958, .889


def test_seeded_noise_is_reproducible_and_unseeded_is_fresh():
    model = om.export(om.mlp(), torch.zeros(2, 64))
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=4))
    x = np.random.default_rng(0).uniform(-1, 1, (8, 64)).astype(np.float32)
    a = rt.run(x, age_s=60, seed=7)[0]
    assert np.array_equal(a, rt.run(x, age_s=60, seed=7)[0])
    assert not np.array_equal(a, rt.run(x, age_s=60, seed=8)[0])
    assert not np.array_equal(rt.run(x, age_s=60)[0], rt.run(x, age_s=60)[0])
    # A fresh runtime on the same chip (e.g. after a restart) gives the same outputs.
    rt2 = ChipRuntime(rt.chip)
    assert np.array_equal(a, rt2.run(x, age_s=60, seed=7)[0])


def test_readout_cache_is_bounded_by_memory():
    model = om.export(om.mlp(), torch.zeros(2, 64))
    chip = program_onnx(model, get_profile("pcm"), seed=4)
    rt = ChipRuntime(chip, cache_bytes=1)  # smaller than one entry: keeps only the newest
    x = np.zeros((1, 64), np.float32)
    for age in (1.0, 2.0, 3.0):
        rt.run(x, age_s=age, seed=0)
    assert rt.stats.entries == 1 and rt.stats.evictions == 2 and rt.stats.misses == 3
    rt.run(x, age_s=3.0, seed=0)
    assert rt.stats.hits == 1


def test_input_validation_names_the_field():
    model = om.export(om.mlp(), torch.zeros(2, 64))
    rt = ChipRuntime(program_onnx(model, get_profile("ideal"), seed=0))
    with pytest.raises(InputError, match="inputs.x: dimension 1 must be 64"):
        rt.run(np.zeros((2, 63), np.float32), age_s=0)
    with pytest.raises(InputError, match="NaN"):
        rt.run(np.full((1, 64), np.nan, np.float32), age_s=0)
    with pytest.raises(InputError, match="unknown input"):
        rt.run({"z": np.zeros((1, 64))}, age_s=0)
    with pytest.raises(ValueError, match="age"):
        rt.run(np.zeros((1, 64), np.float32), age_s=-1)


def _graph(nodes, inits, inp_shape=("N", 4), out_shape=("N", 3)):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(inp_shape))
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))
    m = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], initializer=inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    m.ir_version = 8
    return m


def test_unsupported_models_are_clear_errors():
    profile = get_profile("pcm")
    with pytest.raises(CompileError, match="not a valid ONNX"):
        compile_model(b"definitely not onnx", profile)
    # External data: the model names a file; the compiler must refuse without reading it.
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    w.ClearField("raw_data")
    w.data_location = TensorProto.EXTERNAL
    w.external_data.add(key="location", value="/etc/passwd")
    m = _graph([helper.make_node("MatMul", ["x", "w"], ["y"])], [w])
    with pytest.raises(CompileError, match="external data"):
        compile_model(m.SerializeToString(), profile)
    # A weight-bearing op no rewriter maps: named, with advice.
    W = numpy_helper.from_array(np.zeros((4, 3), np.float32), "W")
    m = _graph([helper.make_node("Einsum", ["x", "W"], ["y"], name="contract", equation="nk,km->nm")], [W])
    with pytest.raises(CompileError, match="contract.*Einsum.*MatMul"):
        compile_model(m.SerializeToString(), profile)
    # A weight computed at run time from constants.
    wt = numpy_helper.from_array(np.ones((3, 4), np.float32), "wt")
    m = _graph(
        [
            helper.make_node("Transpose", ["wt"], ["w"], perm=[1, 0]),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        [wt],
    )
    with pytest.raises(CompileError, match="computed at run time from constants"):
        compile_model(m.SerializeToString(), profile)
    # No analog layer at all.
    m = _graph([helper.make_node("Relu", ["x"], ["y"])], [], out_shape=("N", 4))
    with pytest.raises(CompileError, match="nothing to map"):
        compile_model(m.SerializeToString(), profile)
    # Malformed graph: a node consumes a tensor nobody produces.
    m = _graph([helper.make_node("MatMul", ["x", "ghost"], ["y"])], [])
    with pytest.raises(CompileError, match="malformed"):
        compile_model(m.SerializeToString(), profile)


def test_input_ranges_from_metadata_then_calibration_then_default():
    model, _, _ = om.single_layer("matmul", 20, 5)
    profile = get_profile("pcm")
    assert compile_model(model, profile).specs[0].input_range == 1.0  # documented default
    x = np.random.default_rng(0).uniform(-3, 3, (500, 20)).astype(np.float32)
    r = compile_model(model, profile, calibration=x).specs[0].input_range
    assert 2.9 < r <= 3.0  # the 99.99 % quantile of |U(-3, 3)| over 10,000 samples
    m = onnx.load_from_string(model)
    m.metadata_props.add(key="agedchip.input_ranges", value='{"w": 0.5}')
    assert compile_model(m.SerializeToString(), profile, calibration=x).specs[0].input_range == 0.5
    m.metadata_props[0].value = '{"w": -1}'
    with pytest.raises(CompileError, match="non-positive"):
        compile_model(m.SerializeToString(), profile)


def test_concurrent_misses_of_one_age_compute_it_once():
    import threading

    model = om.export(om.mlp(), torch.zeros(2, 64))
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=4))
    x = np.zeros((1, 64), np.float32)
    outs = []
    threads = [threading.Thread(target=lambda: outs.append(rt.run(x, age_s=777.0, seed=1)[0])) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rt.stats.misses == 1 and rt.stats.hits == 5
    assert all(np.array_equal(o, outs[0]) for o in outs)
    assert rt.peek(777.0, 0) is not None and rt.peek(778.0, 0) is None
    assert rt.stats.hits == 5  # peeking counts nothing


@pytest.mark.parametrize("binding", ["inputs", "initializers"])
@pytest.mark.parametrize(
    "op, rows, cols, kw",
    [("matmul", 1100, 24, {}), ("conv", 0, 10, {"cin": 64, "k": 3, "hw": 5})],
    ids=["matmul-3-tiles", "conv-2-tiles"],
)
def test_weight_effects_only_chip_folds_scales_and_equals_reference(op, rows, cols, kw, binding):
    """With ideal DAC/ADC and no per-MVM noise or IR drop the compiler folds α·r·s_col into the
    weights (compiler.is_linear): the result must still equal the numpy reference exactly (no
    quantisation, so no step mismatches: float32 rounding only), with and without GDC."""
    from chipsim.compiler import is_linear

    profile = get_profile(
        "pcm", ir_drop=0.0, w_noise=0.0, out_noise=0.0, in_clip=False, in_levels=0, out_levels=0, out_bound=0.0
    )
    assert is_linear(profile) and not is_linear(get_profile("pcm"))
    model, _, bias = om.single_layer(op, rows, cols, seed=3, **kw)
    chip = program_onnx(model, profile, seed=11)
    rt = ChipRuntime(chip, binding=binding)
    rng = np.random.default_rng(5)
    shape = (3, kw["cin"], kw["hw"], kw["hw"]) if op == "conv" else (16, rows)
    x = rng.uniform(-1.2, 1.2, shape).astype(np.float32)
    for gdc in (True, False):
        got = rt.run(x, age_s=3.15e7, read_seed=2, gdc=gdc)[0]
        ro = read(chip, 3.15e7, read_seed=2).layers[0]
        mode = "global" if gdc else "off"
        if op == "conv":
            hw = kw["hw"]
            want = analog_matmul(_im2col(x, 3, 1), chip.layers[0], ro, profile, gdc=mode, bias=False) + bias
            want = want.reshape(3, hw, hw, cols).transpose(0, 3, 1, 2)
        else:
            want = analog_matmul(x, chip.layers[0], ro, profile, gdc=mode, bias=False)
        assert np.max(np.abs(got - want)) <= 1e-5 * np.max(np.abs(want))


def test_chip_with_an_older_graph_layout_is_recompiled_from_its_model():
    """A chip programmed by an older build (graph_format 1: another periphery layout) serves the
    same outputs as a new one: its graph is rebuilt from the stored model and input ranges."""
    import dataclasses

    model = om.export(om.cnn(), torch.zeros(2, 3, 8, 8))
    x = np.random.default_rng(0).uniform(0, 1, (4, 3, 8, 8)).astype(np.float32)
    chip = program_onnx(model, get_profile("pcm"), seed=4, calibration=x)
    assert chip.meta["graph_format"] == GRAPH_FORMAT
    old = dataclasses.replace(
        chip,
        meta={k: v for k, v in chip.meta.items() if k != "graph_format"},
        attachments={**chip.attachments, "compiled.onnx": b"an old layout"},
    )
    new_rt, old_rt = ChipRuntime(chip), ChipRuntime(old)
    want = new_rt.run(x, age_s=3600.0, seed=1)[0]
    np.testing.assert_array_equal(old_rt.run(x, age_s=3600.0, seed=1)[0], want)
    # Intermediate tensors (run_tensor's side sessions) come from the recompiled graph too.
    tensor = next(n.output[0] for n in onnx.load_from_string(new_rt.graph).graph.node if n.op_type == "Round")
    np.testing.assert_array_equal(
        old_rt.run_tensor(x, tensor, age_s=3600.0, seed=1), new_rt.run_tensor(x, tensor, age_s=3600.0, seed=1)
    )
    # The calibrated ranges come from the chip's layers, not from (absent) calibration data.
    assert any(layer.input_range != 1.0 for layer in chip.layers)
    broken = dataclasses.replace(
        old, attachments={**old.attachments, "model.onnx": om.export(om.mlp(), torch.zeros(2, 64))}
    )
    with pytest.raises(ValueError, match="no longer compiles"):
        ChipRuntime(broken)


@pytest.mark.parametrize("form", ["wide", "separate"])
def test_benchmark_product_ceiling_keeps_the_models_outputs(form):
    """bench.runtime's ceiling model does k products per layer but still computes the model."""
    from bench.runtime import product_ceiling

    for make, shape in ((om.mlp, (5, 64)), (om.cnn, (3, 3, 8, 8)), (om.transformer, (2, 8, 8))):
        model = om.export(make(), torch.zeros(*shape))
        x = np.random.default_rng(1).uniform(-1, 1, shape).astype(np.float32)
        wide = product_ceiling(model, k=4, form=form)
        sess = ort.InferenceSession(wide, providers=["CPUExecutionProvider"])
        n_products = sum(n.op_type in ("MatMul", "Gemm", "Conv") for n in onnx.load_from_string(wide).graph.node)
        n_orig = sum(n.op_type in ("MatMul", "Gemm", "Conv") for n in onnx.load_from_string(model).graph.node)
        got = sess.run([sess.get_outputs()[0].name], {"x": x})[0]
        np.testing.assert_allclose(got, _digital(model, x), rtol=1e-5, atol=1e-5)
        if form == "separate":  # the extra products exist as nodes (attention MatMuls stay single)
            assert n_products > n_orig


def test_run_with_readout_returns_the_readout_it_ran_with():
    model = om.export(om.mlp(), torch.zeros(2, 64))
    chip = program_onnx(model, get_profile("pcm"), seed=3)
    rt = ChipRuntime(chip)
    x = np.random.default_rng(0).random((3, 64)).astype(np.float32)
    outputs, readout = rt.run_with_readout(x, age_s=86400.0, read_seed=2, seed=1)
    assert rt.stats.misses == 1 and rt.stats.hits == 0  # one cache access, no look-up afterwards
    assert readout.age_s == 86400.0 and readout.read_seed == 2
    fresh = read(chip, 86400.0, read_seed=2)  # the read-out computed again, outside the runtime
    for got, want in zip(readout.layers, fresh.layers):
        assert np.array_equal(got.w_norm, want.w_norm) and np.array_equal(got.alpha_column, want.alpha_column)
    assert np.array_equal(outputs[0], rt.run(x, age_s=86400.0, read_seed=2, seed=1)[0])


def test_inputs_are_checked_against_a_model_before_it_is_programmed():
    from chipsim.compiler import model_inputs
    from chipsim.model_inputs import ModelInputs

    model = om.export(om.mlp(), torch.zeros(2, 64))
    declared = model_inputs(model)
    assert declared == program_onnx(model, get_profile("ideal"), seed=0).meta["inputs"]
    check = ModelInputs(declared).check
    assert check(np.zeros((2, 64)))["x"].dtype == np.float32
    with pytest.raises(InputError) as err:
        check(np.zeros((2, 63)))
    assert err.value.field == "inputs.x" and "dimension 1 must be 64" in str(err.value)


def test_benchmark_targets_floor_only_the_issue_models():
    """#14 sets floors for the digits zoo (and resnet18 by the CNN's); the Fashion-MNIST models
    are reported without one, and their files are found in models/zoo/fmnist."""
    from bench import runtime as B

    s = {"lean": {"cpu": {"median": 0.18}}, "free": {"cpu": {"median": 0.2}}}
    v = B.verdict("mlp-hwa", s)
    assert v["floor"] == 0.19 and v["met_floor"] is False and v["met_free"] is True  # 0.18 ≥ 0.8·0.2
    assert "≥ 0.19 ❌" in B._target(v)
    v = B.verdict("resnet-fmnist-hwa", s)
    assert v["floor"] is None and v["met_floor"] is None and "no floor" in B._target(v)
    model, x = B._model("resnet-fmnist-hwa")
    assert model[:2] and x.shape[1:] == (1, 28, 28)
