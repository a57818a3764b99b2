"""The no-GDC analysis of issue #12 (studies.drift_decay, studies.gdc_off_transform,
studies.gdc_off_analysis) on tiny hand-built models."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.devices.pcm import PCMDevice
from chipsim.ort_session import cpu_session
from studies.drift_decay import expected_decay, log_age_ratio, predicted_decay
from studies.gdc_off_analysis import chip_logits, decays_at
from studies.gdc_off_transform import OffsetScaling, rescale_offsets, tensor_scales

DAY_S, YEAR_S = 86_400.0, 365.25 * 86_400.0
DRIFT_ONLY = get_profile("ideal", drift_scale=1.0)
LAYERS = ("A", "B", "C", "D")


def residual_model(width: int = 16, seed: int = 0, weight_scale: dict[str, float] | None = None) -> bytes:
    """``out = D(relu(relu(C(relu(B(h)))) + h))``, ``h = relu(A(x))``: four Gemm layers with
    biases and one residual Add. ``weight_scale`` multiplies a layer's weights (an exact, uniform
    drift of that layer)."""
    rng = np.random.default_rng(seed)
    scale = weight_scale or {}
    inits = []
    for name in LAYERS:
        # heavy-tailed weights: many small |w|, whose drift exponent μ_ν is above its 0.049 floor
        # (÷ width: outputs of order 1, as large as the unit-σ biases)
        w = (rng.standard_normal((width, 4 if name == "D" else width)) ** 3 / width).astype(np.float32)
        inits += [
            numpy_helper.from_array(w * np.float32(scale.get(name, 1.0)), f"W{name}"),
            numpy_helper.from_array(rng.standard_normal(w.shape[1]).astype(np.float32), f"b{name}"),
        ]
    gemm = lambda name, src, out: helper.make_node("Gemm", [src, f"W{name}", f"b{name}"], [out], name=f"G{name}")  # noqa: E731
    nodes = [
        gemm("A", "x", "h_pre"),
        helper.make_node("Relu", ["h_pre"], ["h"]),
        gemm("B", "h", "b_pre"),
        helper.make_node("Relu", ["b_pre"], ["b_r"]),
        gemm("C", "b_r", "c_pre"),
        helper.make_node("Relu", ["c_pre"], ["c_r"]),
        helper.make_node("Add", ["c_r", "h"], ["s_pre"], name="Add"),
        helper.make_node("Relu", ["s_pre"], ["s"]),
        gemm("D", "s", "out"),
    ]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def run(model_bytes: bytes, x: np.ndarray) -> np.ndarray:
    sess = cpu_session(model_bytes, 1)
    return sess.run(None, {"x": x})[0].astype(np.float64)


def proportionality_error(y: np.ndarray, ref: np.ndarray, c: float) -> float:
    """max |y − c·ref| / max |c·ref|."""
    return float(np.abs(y - c * ref).max() / np.abs(c * ref).max())


# --------------------------------------------------------------------------- drift_decay
@pytest.mark.parametrize("mu,sigma", [(0.049, 0.008), (0.1, 0.045), (0.01, 0.045)])
def test_expected_decay_matches_monte_carlo(mu, sigma):
    """The closed form against draws of ν = |μ + σξ| (the chip's sampler's formula); the last case
    folds ~41 % of the normal's mass, so the folded half-line term is exercised."""
    n = 400_000
    lr = log_age_ratio(PCMDevice(), YEAR_S)
    nu = np.abs(mu + sigma * np.random.default_rng(1).standard_normal(n))
    f = np.exp(-nu * lr)
    se = f.std() / math.sqrt(n)
    # 5 standard errors of the Monte-Carlo mean: a false failure has probability < 1e-6
    assert abs(float(expected_decay(mu, sigma, lr)) - f.mean()) < 5 * se


def test_expected_decay_without_spread_is_the_power_law():
    """σ → 0: ((t + t0)/t0)^−μ; 0.664 at 1 d for ν = 0.049 (PCMDevice.drift_factor's docstring)."""
    lr = log_age_ratio(PCMDevice(), DAY_S)
    assert float(expected_decay(0.049, 1e-9, lr)) == pytest.approx(0.664, abs=5e-4)


def test_predicted_decay_matches_the_chips_measurement():
    """The analytic layer decay against the noise-free GDC reference of a drift-only chip at 1 d
    and 1 y (chip 0, its own ν draws)."""
    b = residual_model(width=64)
    w = {n.name: numpy_helper.to_array(n) for n in onnx.load_from_string(b).graph.initializer}
    dev = DRIFT_ONLY.device_model
    for age in (DAY_S, YEAR_S):
        measured = decays_at(b, DRIFT_ONLY, 0, age)
        for name in ("WA", "WB", "WC"):
            wn = w[name] / np.abs(w[name]).max(axis=0)
            # Per device the factor's spread is f·L·σ_ν: ≈ 0.5·14.3·0.015 ≈ 0.1 at 1 y for the
            # large weights that dominate the |w|-weighted mean (σ_ν ≈ 0.015 at g ≳ 0.2). With an
            # effective n ≳ 500 of these 4 096 heavy-tailed weights the standard error is
            # ≲ 0.005; 0.015 is three of them. A wrong μ_ν(g) (0.1 for every device would give
            # 0.24 at 1 y, 0.049 for every device 0.49 instead of 0.48) fails.
            assert measured[name] == pytest.approx(predicted_decay(wn, dev, age), abs=0.015)


# --------------------------------------------------------------------------- gdc_off_transform
DECAY = {"WA": 0.7, "WB": 0.6, "WC": 0.5, "WD": 0.8}


def test_homogeneous_offsets_make_the_drifted_network_proportional():
    """With every weight scaled by its layer's decay (uniform drift, GDC off), the homogeneous
    rewrite gives exactly Π d × the FP output; each partial rewrite does not."""
    x = np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32)
    fp = run(residual_model(), x)
    drifted = residual_model(weight_scale={k[1]: v for k, v in DECAY.items()})
    c = math.prod(DECAY.values())  # the branch A·B·C, then D
    homogeneous = run(rescale_offsets(drifted, DECAY, OffsetScaling.HOMOGENEOUS), x)
    assert proportionality_error(homogeneous, fp, c) < 1e-5
    for partial in (OffsetScaling.NONE, OffsetScaling.OWN, OffsetScaling.PATH, OffsetScaling.SHORTCUTS):
        assert proportionality_error(run(rescale_offsets(drifted, DECAY, partial), x), fp, c) > 0.5, partial


def test_tensor_scales_follow_the_path():
    s = tensor_scales(residual_model(), DECAY)
    assert s["h"] == pytest.approx(0.7)
    assert s["c_r"] == pytest.approx(0.7 * 0.6 * 0.5)
    assert s["s"] == pytest.approx(0.7 * 0.6 * 0.5)  # the Add keeps the branch's scale
    assert s["out"] == pytest.approx(0.7 * 0.6 * 0.5 * 0.8)


@pytest.mark.parametrize("op,new,message", [("Relu", "Sigmoid", "Sigmoid"), ("Add", "Mul", "product of two")])
def test_rescale_refuses_a_non_homogeneous_op(op, new, message):
    """A scale that cannot be tracked (Sigmoid; the product of two tensors) is an error, not a guess."""
    m = onnx.load_from_string(residual_model())
    next(n for n in m.graph.node if n.op_type == op).op_type = new
    with pytest.raises(ValueError, match=message):
        rescale_offsets(m.SerializeToString(), DECAY, OffsetScaling.PATH)


# --------------------------------------------------------------------------- on the chip
def test_homogeneous_model_on_a_drift_only_chip_is_proportional_to_fp():
    """The serving path with GDC off: the homogeneous rewrite (decays measured by the chip) keeps
    the logits proportional to FP, the shipped offsets do not."""
    b = residual_model(width=64)
    x = np.random.default_rng(3).standard_normal((32, 64)).astype(np.float32)
    fp = run(b, x)
    decay = decays_at(b, DRIFT_ONLY, 0, YEAR_S)
    c = math.prod(decay.values())
    good = chip_logits(rescale_offsets(b, decay, OffsetScaling.HOMOGENEOUS), DRIFT_ONLY, 0, x, YEAR_S, gdc=False)
    bad = chip_logits(b, DRIFT_ONLY, 0, x, YEAR_S, gdc=False)
    # Per-weight ν spread makes each column's decay differ from the layer mean by ~L·σ_ν/√64 ≈
    # 10 % at 1 y; over four layers the logits stay within ~0.3 of c·FP relative to their range.
    assert proportionality_error(good.astype(np.float64), fp, c) < 0.3
    assert proportionality_error(bad.astype(np.float64), fp, c) > 1.0
