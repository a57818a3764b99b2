"""Per-read-out drops of the IR cubic term and the ADC clip (#14 part 2, chipsim.compiler.tile_bounds).

A session that drops an op must give the outputs of one that keeps it, within 1e-5 of the largest
output, on any input — random ones and worst cases at the DAC range; a tile whose bound fails keeps
its ops, and the same comparison catches drops the bound refused (power check).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.compiler.tile_bounds import TOLERANCE, XI_MAX, cubic_negligible
from chipsim.compiler.tile_drops import drop_ops
from chipsim.modes import TileDrop
from chipsim.periphery import IR_DROP_G_RATIO, IR_DROP_POLY, ir_drop_c
from chipsim.runtime import ChipRuntime

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
AGE_S = 86400.0
#: pcm without per-MVM noise and without DAC/ADC rounding: every output a continuous function of
#: the weights, so a drop shows as a difference (no rounding hides it); clips and IR drop stay.
CONTINUOUS = {"w_noise": 0.0, "out_noise": 0.0, "in_levels": 0, "out_levels": 0}
#: Rows of the toy model's small first layer (both drops provable) and its big second layer.
SMALL_ROWS, BIG_ROWS = 8, 512
BIG = 1e3  # far beyond every DAC range: each input sits at ±r after the DAC clip


def _toy(first_only: bool = False) -> tuple[bytes, np.ndarray, np.ndarray]:
    """x[N, 8] → MatMul (8×512) → Relu → MatMul (512×6): tile (0, 0) small, tile (1, 0) a full
    512-row tile of ±(0.5…1) weights (load ≈ 0.35, worst |y| ≫ the ADC range). The first layer's
    rows 0–3 are all ones, so an input along them drives every hidden unit past the second DAC's
    range (the second tile's worst load). ``first_only``: the first layer alone (its outputs the
    model's). Returns the model, calibration inputs and the first layer's weights."""
    rng = np.random.default_rng(7)
    w0 = rng.uniform(-1, 1, (SMALL_ROWS, BIG_ROWS)).astype(np.float32)
    w0[:4] = 1.0
    w1 = (rng.choice([-1.0, 1.0], (BIG_ROWS, 6)) * rng.uniform(0.5, 1.0, (BIG_ROWS, 6))).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h"], name="l0"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "w1"], ["y"], name="l1"),
    ]
    inits = [numpy_helper.from_array(w0, "w0"), numpy_helper.from_array(w1, "w1")]
    out = ("h", BIG_ROWS) if first_only else ("y", 6)
    graph = helper.make_graph(
        nodes[:1] if first_only else nodes,
        "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", SMALL_ROWS])],
        [helper.make_tensor_value_info(out[0], TensorProto.FLOAT, ["N", out[1]])],
        initializer=inits[:1] if first_only else inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), rng.standard_normal((64, SMALL_ROWS)).astype(np.float32), w0


def _worst_inputs(w0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Inputs at the DAC range: for every column of the first layer the sign pattern that
    maximises |y| (and its negation), random sign patterns, and along rows 0–3 (see :func:`_toy`)."""
    signs = np.sign(w0.T)
    e0 = (np.arange(w0.shape[0]) < 4)[None, :].astype(np.float64)
    patterns = [signs, -signs, rng.choice([-1.0, 1.0], (64, w0.shape[0])), e0, -e0]
    return (BIG * np.concatenate(patterns)).astype(np.float32)


def _pair(model: bytes, profile, calibration) -> tuple[ChipRuntime, ChipRuntime]:
    chip = program_onnx(model, profile, seed=0, calibration=calibration)
    return ChipRuntime(chip, threads=1), ChipRuntime(chip, threads=1, tile_drops=False)


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b)) / max(float(np.max(np.abs(b))), 1e-30))


def test_the_small_tile_drops_both_ops_and_the_big_tile_keeps_them():
    model, x, _ = _toy()
    on, off = _pair(model, get_profile("pcm"), x)
    assert on.dropped_ops(AGE_S) == {(0, 0, TileDrop.IR_CUBIC), (0, 0, TileDrop.ADC_CLIP)}
    assert off.dropped_ops(AGE_S) == frozenset()


def test_the_load_bound_equals_the_design_formula_and_the_dropped_cubic_share_is_below_1e5():
    """Independent of the packed weights: DESIGN §3.3's load a = (n/g_ratio)·Σ_j |w_ij|·|x'_j| at
    |x'| = 1, and c(a) from chipsim.periphery, on the read-out's normalised weights."""
    model, x, _ = _toy()
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0, calibration=x), threads=1)
    w = [layer.w_norm.astype(np.float64) for layer in rt.readout(AGE_S).layers]
    loads = [wl.shape[0] / IR_DROP_G_RATIO * np.abs(wl).sum(axis=0).max() for wl in w]
    c3 = IR_DROP_POLY[2]
    shares = [c3 * a**3 / ir_drop_c(a) for a in loads]
    assert shares[0] <= TOLERANCE and cubic_negligible(loads[0])  # dropped, and rightly
    assert shares[1] > 100 * TOLERANCE and not cubic_negligible(loads[1])  # kept: its share is large
    # the ADC clip of tile (1, 0): its worst output exceeds the ADC range by far (kept)
    assert np.abs(w[1]).sum(axis=0).max() > 2 * get_profile("pcm").out_bound


@pytest.mark.parametrize("profile", ["continuous", "pcm"])
def test_drops_keep_the_toy_outputs_on_random_and_worst_case_inputs(profile):
    model, x, w0 = _toy()
    prof = get_profile("pcm", **CONTINUOUS) if profile == "continuous" else get_profile("pcm")
    on, off = _pair(model, prof, x)
    xs = np.concatenate([x, _worst_inputs(w0, np.random.default_rng(1))])
    for age in (1.0, AGE_S, 3.15e7):
        assert on.dropped_ops(age), "nothing dropped: the test would test nothing"
        a, b = (rt.run(xs, age_s=age, seed=5)[0] for rt in (on, off))
        assert _max_rel(a, b) <= TOLERANCE


def test_forced_drops_on_the_big_tile_are_caught_by_the_same_comparison(monkeypatch):
    """Power check: the big tile's cubic term and clip do matter, so dropping them anyway (the
    decision patched to drop them) fails the comparison the tests above pass. The cubic term is
    checked without the ADC clip, which would hide it where the big tile's outputs saturate."""
    model, x, w0 = _toy()
    xs = np.concatenate([x, _worst_inputs(w0, np.random.default_rng(1))])
    for what, extra in ((TileDrop.IR_CUBIC, {"out_bound": 0.0}), (TileDrop.ADC_CLIP, {})):
        _, off = _pair(model, get_profile("pcm", **CONTINUOUS, **extra), x)
        ref = off.run(xs, age_s=AGE_S)[0]
        forced = frozenset({(1, 0, what)})
        monkeypatch.setattr("chipsim.compiler.tile_drops.decide_drops", lambda *args, forced=forced: forced)
        rt = ChipRuntime(off.chip, threads=1)
        assert rt.dropped_ops(AGE_S) == forced
        assert _max_rel(rt.run(xs, age_s=AGE_S)[0], ref) > 5 * TOLERANCE, what


def _zoo_inputs(name: str) -> np.ndarray:
    x = np.load(ZOO / f"{name}.eval.npz")["x"][:64].astype(np.float32)
    saturated = BIG * np.random.default_rng(2).choice([-1.0, 1.0], x.shape).astype(np.float32)
    return np.concatenate([x, saturated])


@pytest.mark.parametrize("name", ["mlp-hwa", "cnn-hwa", "transformer-hwa"])
def test_drops_keep_the_zoo_outputs(name):
    model = (ZOO / f"{name}.onnx").read_bytes()
    xs = _zoo_inputs(name)
    for prof in (get_profile("pcm", **CONTINUOUS), get_profile("pcm")):
        on, off = _pair(model, prof, xs[:64])
        assert on.dropped_ops(AGE_S)
        for seed in (1, 2):
            a, b = (rt.run(xs, age_s=AGE_S, seed=seed)[0] for rt in (on, off))
            assert _max_rel(a, b) <= TOLERANCE, (prof.in_levels, seed)


def test_each_age_has_its_own_decision_and_session():
    """transformer-hwa on pcm: 1 s and 1 d drop different tiles (drift lowers the loads); served
    alternately, each age keeps its own session and outputs."""
    name = "transformer-hwa"
    xs = _zoo_inputs(name)
    on, off = _pair((ZOO / f"{name}.onnx").read_bytes(), get_profile("pcm", **CONTINUOUS), xs[:64])
    ages = (1.0, AGE_S)
    assert on.dropped_ops(ages[0]) != on.dropped_ops(ages[1])
    for age in (*ages, *ages):
        assert _max_rel(on.run(xs, age_s=age)[0], off.run(xs, age_s=age)[0]) <= TOLERANCE


@pytest.mark.parametrize("kw", [{"lowering": "full"}, {"binding": "inputs"}])
def test_the_full_lowering_and_the_inputs_binding_drop_nothing(kw):
    model, x, _ = _toy()
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0, calibration=x), threads=1, **kw)
    assert rt.dropped_ops(AGE_S) == frozenset()


def test_explicit_noise_beyond_the_bound_runs_the_undropped_graph():
    model, x, _ = _toy()
    on, off = _pair(model, get_profile("pcm"), x)
    noise = off.draw_noise(x, np.random.default_rng(3))
    first = next(iter(noise))
    noise[first] = noise[first].copy()
    noise[first].flat[0] = 50 * XI_MAX  # pushes one output of the clipped-free tile past the ADC
    assert (0, 0, TileDrop.ADC_CLIP) in on.dropped_ops(AGE_S)
    np.testing.assert_array_equal(on.run(x, age_s=AGE_S, noise=noise)[0], off.run(x, age_s=AGE_S, noise=noise)[0])


def test_drop_ops_rewrites_only_matching_patterns():
    model, x, _ = _toy()
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0, calibration=x), threads=1)
    graph = onnx.load_from_string(rt.graph)
    ops = [n.op_type for n in graph.graph.node]
    everything = {(layer, 0, what) for layer in (0, 1) for what in TileDrop}
    dropped, applied = drop_ops(graph, everything | {(7, 0, TileDrop.IR_CUBIC)})  # no layer 7
    assert applied == everything
    after = [n.op_type for n in dropped.graph.node]
    assert ops.count("Clip") - after.count("Clip") == 2
    assert (ops.count("Add") - after.count("Add"), ops.count("Mul") - after.count("Mul")) == (2, 2)
    assert [n.op_type for n in graph.graph.node] == ops  # the input graph is left as it was
    onnx.checker.check_model(dropped)  # still a valid graph, nodes in order


@pytest.mark.parametrize("margin", [0.99, 1.01])
def test_the_adc_clip_goes_exactly_when_the_worst_output_fits_the_range(margin, monkeypatch):
    """The first tile's worst output is max_i Σ_j |w_ij| (at x' = sign(w_i), no noise, no ADC
    rounding; its IR term ~1e-4 of it): with the ADC range 1 % above it the clip goes and changes
    nothing; 1 % below, the clip stays — and dropping it anyway changes that worst output."""
    model, x, w0 = _toy(first_only=True)
    chip = program_onnx(model, get_profile("pcm", **CONTINUOUS), seed=0, calibration=x)
    w = ChipRuntime(chip, threads=1).readout(AGE_S).layers[0].w_norm
    worst = float(np.abs(w.astype(np.float64)).sum(axis=0).max())
    # the same devices (the ADC range plays no part in programming), compiled with the new range
    chip = program_onnx(model, get_profile("pcm", **CONTINUOUS, out_bound=margin * worst), seed=0, calibration=x)
    on, off = ChipRuntime(chip, threads=1), ChipRuntime(chip, threads=1, tile_drops=False)
    xs = _worst_inputs(w0, np.random.default_rng(1))
    np.testing.assert_array_equal(on.readout(AGE_S).layers[0].w_norm, w)
    clip = (0, 0, TileDrop.ADC_CLIP)
    assert (clip in on.dropped_ops(AGE_S)) == (margin > 1)
    if margin > 1:
        assert _max_rel(on.run(xs, age_s=AGE_S)[0], off.run(xs, age_s=AGE_S)[0]) <= TOLERANCE
    else:
        monkeypatch.setattr("chipsim.compiler.tile_drops.decide_drops", lambda *args: frozenset({clip}))
        forced = ChipRuntime(chip, threads=1)
        assert forced.dropped_ops(AGE_S) == {clip}
        assert _max_rel(forced.run(xs, age_s=AGE_S)[0], off.run(xs, age_s=AGE_S)[0]) > 5 * TOLERANCE
