"""The energy/latency estimate (chipsim.cost): counts recomputed by hand on hand-built models,
the HERMES calibration against its published figures, scaling and error handling.

Expected counts are written out as arithmetic on the layer shapes, never produced by the code
under test; prices (the cost model's constants) are inputs of the formula.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import LayerSpec, program
from chipsim.compiler import program_onnx
from chipsim.cost import CostError, CostEstimator, count_chip, estimate, get_cost_model, hermes_cost_model
from chipsim.cost.cost_model import CostModel, profile_warnings, validate_cost_model
from chipsim.profiles import get_profile

M1 = get_cost_model("hermes-1phase")


def _model(nodes, inputs, outputs, weights: dict[str, np.ndarray]) -> bytes:
    inits = [numpy_helper.from_array(np.asarray(w, np.float32), n) for n, w in weights.items()]
    model = helper.make_model(
        helper.make_graph(nodes, "g", inputs, outputs, initializer=inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _w(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * 0.1


def _vi(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _chip(model: bytes, **profile):
    return program_onnx(model, get_profile("pcm", **profile), seed=0)


def two_layer() -> bytes:
    """x[N,600] → MatMul 600×20 → Relu → MatMul 20×10."""
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="fc0"),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w1"], ["y"], name="fc1"),
    ]
    return _model(nodes, [_vi("x", ["N", 600])], [_vi("y", ["N", 10])], {"w0": _w(600, 20), "w1": _w(20, 10, seed=1)})


def test_two_layer_model_counts_by_hand():
    chip = _chip(two_layer())  # tile_rows = 512: 600 rows → ceil(600/512) = 2 tiles of 300
    est = estimate(chip, batch=3)
    fc0, fc1 = est.layers
    assert (fc0.tiles, fc0.rows, fc0.cols, fc0.mvms) == (2, 600, 20, 1)
    assert fc0.tile_mvms == 2 and fc0.analog_macs == 300 * 20 + 300 * 20
    assert fc0.dac_conversions == 600 and fc0.adc_conversions == 2 * 20
    assert fc0.digital_ops == (2 - 1) * 20  # adding the two tiles' partial sums
    assert (fc1.tiles, fc1.tile_mvms, fc1.analog_macs, fc1.dac_conversions, fc1.adc_conversions, fc1.digital_ops) == (
        1,
        1,
        20 * 10,
        20,
        10,
        0,
    )
    assert est.digital.ops == 20 and est.digital.by_op == {"Relu": 20}
    s = est.per_sample
    assert (s.tile_mvms, s.analog_macs, s.dac_conversions, s.adc_conversions, s.digital_ops) == (
        3,
        12000 + 200,
        600 + 20,
        40 + 10,
        20 + 20,
    )
    energy = 3 * M1.e_tile_mvm_j + 12200 * M1.e_mac_j + 620 * M1.e_dac_j + 50 * M1.e_adc_j + 40 * M1.e_digital_op_j
    latency = 2 * M1.t_tile_mvm_s + 40 * M1.t_digital_op_s  # two layers in sequence, tiles in parallel
    assert s.energy_j == pytest.approx(energy, rel=1e-12)
    assert s.latency_s == pytest.approx(latency, rel=1e-12)
    assert est.energy_j == pytest.approx(3 * energy, rel=1e-12)
    assert est.latency_s == pytest.approx(3 * latency, rel=1e-12)  # samples one after the other


def small_cnn() -> bytes:
    """x[N,3,8,8] → Conv 3→64 3×3 pad 1 (+bias) → Relu → Conv 64→8 3×3 stride 2 pad 1 (+bias)
    → MaxPool 2×2 → Flatten → Gemm 32→10 (+bias)."""
    nodes = [
        helper.make_node("Conv", ["x", "c1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["ar"], name="relu"),
        helper.make_node("Conv", ["ar", "c2", "b2"], ["c"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("MaxPool", ["c"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="fc", transB=1),
    ]
    weights = {
        "c1": _w(64, 3, 3, 3),
        "b1": _w(64),
        "c2": _w(8, 64, 3, 3, seed=2),
        "b2": _w(8),
        "g": _w(10, 32, seed=3),
        "gb": _w(10),
    }
    return _model(nodes, [_vi("x", ["N", 3, 8, 8])], [_vi("y", ["N", 10])], weights)


def test_conv_model_counts_by_hand():
    est = estimate(_chip(small_cnn()), batch=2)
    conv1, conv2, fc = est.layers
    # conv1: 3·3·3 = 27 rows, 64 columns, one MVM per output pixel: 8·8 = 64
    assert (conv1.tiles, conv1.rows, conv1.cols, conv1.mvms) == (1, 27, 64, 64)
    assert (conv1.analog_macs, conv1.dac_conversions, conv1.adc_conversions, conv1.digital_ops) == (
        64 * 27 * 64,
        64 * 27,
        64 * 64,
        64 * 64,
    )  # digital: the bias
    # conv2: 64·9 = 576 rows > 512: ⌊512/9⌋ = 56 channels per tile at most → 2 tiles of 32 channels
    # (288 rows each); stride 2 → 4·4 = 16 MVMs
    assert (conv2.tiles, conv2.rows, conv2.cols, conv2.mvms) == (2, 576, 8, 16)
    assert (conv2.analog_macs, conv2.dac_conversions, conv2.adc_conversions) == (16 * 576 * 8, 16 * 576, 16 * 2 * 8)
    assert conv2.digital_ops == 16 * ((2 - 1) * 8 + 8)  # partial sums + bias
    assert (fc.rows, fc.cols, fc.mvms, fc.digital_ops) == (32, 10, 1, 10)
    relu, pool = 64 * 8 * 8, (8 * 2 * 2) * (2 * 2)  # MaxPool: output elements × window
    assert est.digital.by_op == {"Relu": relu, "MaxPool": pool, "Flatten": 0}
    latency = (64 + 16 + 1) * M1.t_tile_mvm_s + (4096 + 256 + 10 + relu + pool) * M1.t_digital_op_s
    assert est.per_sample.latency_s == pytest.approx(latency, rel=1e-12)


def test_grouped_conv_groups_run_in_parallel():
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="gconv", pads=[1, 1, 1, 1], group=2)]
    chip = _chip(_model(nodes, [_vi("x", ["N", 4, 6, 6])], [_vi("y", ["N", 4, 6, 6])], {"w": _w(4, 2, 3, 3)}))
    (layer,) = estimate(chip).layers
    assert len(layer.chip_layers) == 1  # one programmed layer per node, its tile holding both groups
    # one tile: per group 2 channels · 9 = 18 rows, 2 columns; the DAC converts 2·18 = 36 inputs; 6·6 = 36 MVMs
    assert (layer.tiles, layer.rows, layer.cols, layer.mvms) == (1, 36, 4, 36)
    assert layer.analog_macs == 36 * 2 * 18 * 2
    assert layer.latency_s == pytest.approx(36 * M1.t_tile_mvm_s, rel=1e-12)  # not 2·36


def attention_like(seq="T") -> bytes:
    """x[N,T,16] → MatMul 16×8 per token → y; y·yᵀ (digital) → Softmax."""
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="proj"),
        helper.make_node("Transpose", ["y"], ["yt"], name="t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["y", "yt"], ["s"], name="scores"),
        helper.make_node("Softmax", ["s"], ["p"], name="softmax", axis=-1),
    ]
    return _model(nodes, [_vi("x", ["N", seq, 16])], [_vi("p", ["N", seq, seq])], {"w": _w(16, 8)})


def test_per_token_matmul_and_digital_attention_by_hand():
    est = estimate(_chip(attention_like(seq=5)))
    (proj,) = est.layers
    assert (proj.mvms, proj.analog_macs, proj.dac_conversions, proj.adc_conversions) == (5, 5 * 16 * 8, 5 * 16, 5 * 8)
    # scores: 5×5 outputs, each an 8-long dot product, 2 ops per MAC; softmax: 3 per element
    assert est.digital.by_op == {"Transpose": 0, "MatMul": 2 * 5 * 5 * 8, "Softmax": 3 * 5 * 5}


def test_symbolic_sequence_length_from_the_request_shapes():
    chip = _chip(attention_like(seq="T"))
    plain = estimate(chip, batch=2)
    assert plain.layers[0].mvms == 1 and any("'T'" in w for w in plain.warnings)
    seven = estimate(chip, input_shapes={"x": (2, 7, 16)})
    assert seven.batch == 2 and seven.layers[0].mvms == 7 and not seven.warnings
    assert seven.digital.by_op["MatMul"] == 2 * 7 * 7 * 8
    e, t = CostEstimator(chip).request(2, {"x": (2, 7, 16)})
    assert (e, t) == pytest.approx((seven.energy_j, seven.latency_s), rel=1e-12)


def square_layer(n: int) -> bytes:
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mvm")]
    return _model(nodes, [_vi("x", ["N", n])], [_vi("y", ["N", n])], {"w": _w(n, n)})


@pytest.mark.parametrize("mode, tops_per_w, tops", [("hermes-1phase", 9.76, 63.1), ("hermes-4phase", 2.48, 16.1)])
def test_hermes_calibration_reproduces_the_published_figures(mode, tops_per_w, tops):
    # Le Gallo et al. 2023 publish three significant digits: ±0.005 TOPS/W and ±0.05 TOPS.
    chip = _chip(square_layer(256), tile_rows=256)  # one 256×256 core, 8-bit DAC/ADC (254 steps)
    est = estimate(chip, cost_model=mode)
    s = est.per_sample
    assert (s.tile_mvms, s.analog_macs, s.dac_conversions, s.adc_conversions, s.digital_ops) == (
        1,
        256 * 256,
        256,
        256,
        0,
    )
    ops = 2 * 256 * 256
    assert abs(ops / s.energy_j / 1e12 - tops_per_w) <= 0.005
    assert abs(64 * ops / s.latency_s / 1e12 - tops) <= 0.05  # 64 cores busy at once
    assert not est.warnings  # pcm device, 8-bit converters: what HERMES is


def test_read_modes_share_the_crossbar_and_scale_the_periphery_by_the_phase_count():
    # E(P) = E0 + P·E_phase through the published points: E0 = (4·E1 − E4)/3 per 256×256 MVM.
    e1, e4 = 2 * 256 * 256 / 9.76e12, 2 * 256 * 256 / 2.48e12
    m4 = get_cost_model("hermes-4phase")
    assert M1.e_mac_j == m4.e_mac_j == pytest.approx((4 * e1 - e4) / 3 / (256 * 256), rel=1e-12)
    assert (m4.e_dac_j + m4.e_adc_j) / (M1.e_dac_j + M1.e_adc_j) == pytest.approx(4, rel=1e-12)
    assert M1.e_dac_j == M1.e_adc_j  # the stated equal-share assumption


def test_full_512_tile_is_within_a_factor_two_of_ambrogio_2023():
    # Plausibility only: Ambrogio et al. 2023 (Nature) report up to 12.4 TOPS/W chip-sustained on
    # 512×512-weight tiles in the same 14 nm PCM technology, a different periphery and a
    # workload average; the HERMES-calibrated model must land in the same order of magnitude.
    est = estimate(_chip(square_layer(512)))
    tops_w = 2 * 512 * 512 / est.per_sample.energy_j / 1e12
    assert 12.4 / 2 <= tops_w <= 12.4 * 2


def test_adc_share_only_matters_for_non_square_tiles():
    chip = _chip(square_layer(256), tile_rows=256)
    a = estimate(chip, cost_model=hermes_cost_model(1, adc_share=0.2)).energy_j
    b = estimate(chip, cost_model=hermes_cost_model(1, adc_share=0.8)).energy_j
    assert a == pytest.approx(b, rel=1e-12)
    tall = _chip(two_layer())  # 600 rows → 20 columns: DACs dominate
    lo = estimate(tall, cost_model=hermes_cost_model(1, adc_share=0.2)).layers[0]
    hi = estimate(tall, cost_model=hermes_cost_model(1, adc_share=0.8)).layers[0]
    assert hi.energy_j < lo.energy_j
    per_conv = hermes_cost_model(1).e_dac_j * 2  # DAC + ADC energy per conversion pair, share-independent
    assert lo.energy_j - hi.energy_j == pytest.approx(0.6 * per_conv * (600 - 40), rel=1e-9)


def test_energy_and_latency_scale_with_batch_and_request_matches_estimate():
    chip = _chip(small_cnn())
    one, two = estimate(chip, batch=1), estimate(chip, batch=2)
    assert two.energy_j == pytest.approx(2 * one.energy_j, rel=1e-12)
    assert two.latency_s == pytest.approx(2 * one.latency_s, rel=1e-12)
    assert two.per_sample.energy_j == pytest.approx(one.per_sample.energy_j, rel=1e-12)
    est = CostEstimator(chip)
    assert est.request(5) == pytest.approx((estimate(chip, batch=5).energy_j, estimate(chip, batch=5).latency_s))
    assert est.request(5) == est.request(5)  # cached


def mlp(depth: int) -> bytes:
    nodes, prev = [], "x"
    for i in range(depth):
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        prev = f"h{i}"
        if i < depth - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"r{i}"], name=f"relu{i}"))
            prev = f"r{i}"
    nodes[-1].output[0] = "y"
    return _model(
        nodes, [_vi("x", ["N", 64])], [_vi("y", ["N", 64])], {f"w{i}": _w(64, 64, seed=i) for i in range(depth)}
    )


def test_twice_the_layers_twice_the_analog_cost():
    a, b = estimate(_chip(mlp(2))), estimate(_chip(mlp(4)))
    analog = lambda e: sum(layer.energy_j for layer in e.layers)  # noqa: E731
    assert analog(b) == pytest.approx(2 * analog(a), rel=1e-12)
    assert (a.digital.ops, b.digital.ops) == (1 * 64, 3 * 64)  # Relus between the layers
    assert b.energy_j == pytest.approx(2 * analog(a) + 3 * 64 * M1.e_digital_op_j, rel=1e-12)
    assert b.latency_s == pytest.approx(4 * M1.t_tile_mvm_s + 3 * 64 * M1.t_digital_op_s, rel=1e-12)


def test_four_phase_costs_more_energy_and_time_than_one_phase():
    chip = _chip(small_cnn())
    one, four = estimate(chip, cost_model="hermes-1phase"), estimate(chip, cost_model="hermes-4phase")
    assert four.energy_j > 3 * one.energy_j and four.latency_s > 3 * one.latency_s


def test_zoo_layer_mvms_agree_with_the_compilers_shapes():
    # Independent source: the compiler's per-sample output shape of each programmed layer.
    for name in ("mlp-hwa", "cnn-hwa", "transformer-hwa"):
        with open(f"models/zoo/{name}.onnx", "rb") as f:
            chip = _chip(f.read())
        est = estimate(chip)
        plans = {p["name"]: p for p in chip.meta["plans"]}
        for layer in est.layers:
            p = plans[layer.chip_layers[0]]
            axis = 1 if p["kind"] == "conv" else -1
            assert layer.mvms == math.prod(p["out_shape"]) // p["out_shape"][axis], (name, layer.name)
            assert layer.analog_macs == layer.mvms * sum(b - a for a, b in p["tiles"]) * p["cols"]
        assert est.per_sample.energy_j > 0 and not est.warnings


def test_to_dict_is_json_and_labelled_an_estimate():
    d = json.loads(json.dumps(estimate(_chip(two_layer()), batch=2).to_dict()))
    assert d["estimate"] is True and "estimate" in d["note"] and d["cost_model"] == "hermes-1phase"
    assert d["batch"] == 2 and d["energy_j"] > 0 and d["latency_s"] > 0
    assert [row["name"] for row in d["layers"]] == ["fc0", "fc1"]
    assert d["per_sample"]["energy_j"] == pytest.approx(d["energy_j"] / 2)
    assert set(d["constants"]) >= {"e_mac_j", "e_dac_j", "e_adc_j", "e_digital_op_j", "t_tile_mvm_s", "sources"}
    parts = d["per_sample"]["energy_breakdown_j"]
    assert sum(parts.values()) == pytest.approx(d["per_sample"]["energy_j"], rel=1e-12)


def test_bad_requests_name_their_field():
    chip = _chip(two_layer())
    cases = [
        (dict(batch=0), "batch"),
        (dict(batch=True), "batch"),
        (dict(batch=2.0), "batch"),
        (dict(input_shapes={"z": (1, 600)}), "inputs.z"),
        (dict(input_shapes={"x": (1, 599)}), "inputs.x"),
        (dict(input_shapes={"x": (1, 600, 1)}), "inputs.x"),
        (dict(cost_model="hermes-2phase"), "cost_model"),
        (dict(batch=2, input_shapes={"x": (3, 600)}), "batch"),
    ]
    for kwargs, field in cases:
        with pytest.raises(CostError) as err:
            estimate(chip, **kwargs)
        assert err.value.field == field, kwargs
    with pytest.raises(CostError) as err:
        CostEstimator(chip).request(2, {"x": (3, 600)})
    assert err.value.field == "inputs.x"
    no_onnx = program([LayerSpec("fc", _w(8, 4))], get_profile("pcm"), seed=0)
    with pytest.raises(CostError) as err:
        estimate(no_onnx)
    assert err.value.field == "chip"


def test_cost_model_validation_catches_unit_slips():
    good = M1.model_dump()
    assert validate_cost_model(good) == M1
    for field, value in [("e_adc_j", 25.7), ("e_mac_j", -1.0), ("t_tile_mvm_s", 0.0), ("x_j", 1.0)]:
        with pytest.raises(CostError) as err:
            validate_cost_model({**good, field: value})
        assert field in str(err.value)
    with pytest.raises(CostError):
        hermes_cost_model(2)
    with pytest.raises(CostError):
        hermes_cost_model(1, adc_share=1.5)
    assert isinstance(M1, CostModel)


def test_profile_differences_from_the_calibration_are_warned():
    assert profile_warnings(get_profile("pcm"), M1) == []
    assert any("reram" in w for w in profile_warnings(get_profile("reram"), M1))
    assert any("ideal" in w for w in profile_warnings(get_profile("ideal"), M1))
    assert any("4 bits" in w for w in profile_warnings(get_profile("pcm", in_levels=14), M1))


def test_counts_do_not_depend_on_the_profile_noise():
    # The ideal profile compiles to a different emulation graph; the chip does the same work.
    a, b = count_chip(_chip(small_cnn())), count_chip(program_onnx(small_cnn(), get_profile("ideal"), seed=0))
    assert a == b


def test_command_line_prints_the_estimate(tmp_path, capsys):
    from chipsim.cost.__main__ import main

    path = tmp_path / "m.onnx"
    path.write_bytes(two_layer())
    assert main([str(path), "--batch", "2", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["batch"] == 2 and [row["tiles"] for row in d["layers"]] == [2, 1]
    assert main([str(path), "--adc-share", "0.8"]) == 0
    out = capsys.readouterr().out
    assert "ESTIMATE" in out and "fc0" in out


def test_malformed_shapes_are_domain_errors():
    chip = _chip(two_layer())
    for shapes in ({"x": ("a", 600)}, {"x": (1.5, 600)}, {"x": 600}):
        with pytest.raises(CostError) as err:
            estimate(chip, input_shapes=shapes)
        assert err.value.field == "inputs.x"
        with pytest.raises(CostError):
            CostEstimator(chip).request(1, shapes)


@pytest.mark.parametrize(
    "path", ["models/zoo/cnn-hwa.onnx", "models/zoo/transformer-hwa.onnx", "models/zoo/fmnist/lstm-fmnist-hwa.onnx"]
)
def test_the_estimator_holds_a_skeleton_and_counts_what_the_whole_model_counts(path):
    from chipsim.cost import count_graph
    from chipsim.cost.analog_layers import chip_plans

    with open(path, "rb") as f:
        data = f.read()
    chip = _chip(data)
    est = CostEstimator(chip)
    # the weights' values are gone (a 2 GB model stays 2 GB resident otherwise) ...
    assert est._model.ByteSize() < len(data) / 4
    # ... and every count, taken on the whole model parsed again, is the same
    whole = count_graph(onnx.load_from_string(data), chip_plans(chip), 3)
    assert [dataclasses.astuple(layer) for layer in whole.layers] == [
        dataclasses.astuple(layer) for layer in count_chip(chip, 3).layers
    ]
    assert whole.digital == count_chip(chip, 3).digital
