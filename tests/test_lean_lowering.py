"""The lean lowering (graph format 4, #14 part 2) against the full one it replaces.

Both lowerings write the same periphery (DESIGN §3.3), so on one chip they must give:
- the same outputs for the same per-MVM noise (a seeded request, or no noise at all): every fold
  is exact in real arithmetic, so outputs differ at most where float rounding moves a value across
  an ADC/DAC rounding boundary;
- the same noise statistics across independent draws (mean and σ per output, different seeds),
  with a power check: a chip whose noise is 1.5× stronger fails the same test.
The full lowering was itself checked against the numpy reference periphery (tests/test_runtime.py).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import compile_model, program_onnx
from chipsim.compiler.folding import nonnegative
from chipsim.modes import GraphLowering
from chipsim.runtime import ChipRuntime

ZOO = Path(__file__).resolve().parent.parent / "models" / "zoo"
ZOO_MODELS = ("mlp-hwa", "cnn-hwa", "transformer-hwa")
AGE_S = 86400.0
#: Fraction of outputs allowed to differ (beyond float rounding, 1e-5 of the largest output)
#: between the lowerings for the same noise: a difference needs a pre-rounding value within a few
#: ulp (~1e-7 relative) of a rounding boundary in some layer, ~1e-6 per element and layer: rare
#: on the zoo's small models (~1e4-1e5 noise values per run), but see the foreign-model test for
#: deep ones; 1e-3 still fails for any systematic difference.
FLIP_FRACTION = 1e-3


def _zoo(name: str, n: int) -> tuple[bytes, np.ndarray]:
    x = np.load(ZOO / f"{name}.eval.npz")["x"][:n].astype(np.float32)
    return (ZOO / f"{name}.onnx").read_bytes(), x


def _pair(model: bytes, profile, calibration, **runtime) -> dict[str, ChipRuntime]:
    """One chip (programmed once), served by each lowering."""
    chip = program_onnx(model, profile, seed=0, calibration=calibration)
    return {low: ChipRuntime(chip, threads=1, lowering=low, **runtime) for low in ("full", "lean")}


def _off_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Share of outputs that differ by more than 1e-5 of the largest output."""
    scale = max(float(np.max(np.abs(a))), 1e-30)
    return float((np.abs(a.astype(np.float64) - b) > 1e-5 * scale).mean())


def _assert_same(a: np.ndarray, b: np.ndarray, what: str) -> None:
    off = _off_fraction(a, b)
    assert off <= FLIP_FRACTION, f"{what}: {off:.2%} of outputs differ"


@pytest.mark.parametrize("name", ZOO_MODELS)
@pytest.mark.parametrize("profile", ["ideal", "pcm-no-mvm-noise", "pcm"])
def test_lean_equals_full_for_the_same_noise_on_the_zoo(name, profile):
    model, x = _zoo(name, 64)
    prof = get_profile("pcm", w_noise=0.0, out_noise=0.0) if profile == "pcm-no-mvm-noise" else get_profile(profile)
    rts = _pair(model, prof, x)
    assert rts["lean"].lowering == GraphLowering.LEAN
    # ideal: a linear profile compiles to the model's own products in both lowerings
    assert (rts["lean"].graph == rts["full"].graph) == (profile == "ideal")
    for seed in (1, 2):
        full, lean = (rts[k].run(x, age_s=AGE_S, seed=seed)[0] for k in ("full", "lean"))
        _assert_same(full, lean, f"{name} on {profile}, seed {seed}")


def _stats_z(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Largest |z| over outputs of the difference of means and of log σ between draws ``a`` and
    ``b`` (K, outputs): SE of a mean difference sqrt((σa² + σb²)/K); of log σa − log σb,
    sqrt(1/(K−1)) (var log s ≈ 1/(2(K−1)) for Gaussian samples)."""
    k = a.shape[0]
    ma, mb, sa, sb = a.mean(0), b.mean(0), a.std(0, ddof=1), b.std(0, ddof=1)
    z_mean = np.abs(ma - mb) / np.sqrt((sa**2 + sb**2) / k + 1e-30)
    z_std = np.abs(np.log(sa / sb)) / np.sqrt(1.0 / (k - 1))
    return float(z_mean.max()), float(z_std.max())


#: |z| bound per output: ≤ 40 outputs compared per test, P(|z| > 4.5) = 6.8e-6 each, so a false
#: alarm has probability < 3e-4 (and the seeds are fixed).
Z_MAX = 4.5


# 256 draws per output: the MLP stays in the fast lane, the CNN and transformer (~1 s each) are slow
@pytest.mark.parametrize("name", [n if n == "mlp-hwa" else pytest.param(n, marks=pytest.mark.slow) for n in ZOO_MODELS])
def test_lean_noise_statistics_equal_the_full_lowerings(name):
    model, x = _zoo(name, 4)
    k = 256  # draws per output: each sample repeated k times in one batch (independent noise per row)
    xs = np.repeat(x, k, axis=0)
    rts = _pair(model, get_profile("pcm"), x)

    def draws(rt: ChipRuntime, seed: int) -> np.ndarray:
        y = rt.run(xs, age_s=AGE_S, seed=seed)[0]
        return y.reshape(len(x), k, -1).transpose(1, 0, 2).reshape(k, -1)

    z_mean, z_std = _stats_z(draws(rts["full"], 10), draws(rts["lean"], 11))
    assert z_mean < Z_MAX and z_std < Z_MAX, (z_mean, z_std)
    # Power: 1.5x the per-MVM noise on the lean side must fail the σ test.
    loud = _pair(model, get_profile("pcm", w_noise=0.0175 * 1.5, out_noise=0.04 * 1.5), x)["lean"]
    assert _stats_z(draws(rts["full"], 10), draws(loud, 11))[1] > Z_MAX


def test_cnn_lean_graph_drops_abs_concat_split_and_moves_relu_and_maxpool():
    model, x = _zoo("cnn-hwa", 8)
    graphs = {
        low: onnx.load_from_string(compile_model(model, get_profile("pcm"), calibration=x, lowering=low).graph)
        for low in ("full", "lean")
    }
    ops = {low: Counter(n.op_type for n in g.graph.node) for low, g in graphs.items()}
    assert ops["full"]["Concat"] == 3 and ops["full"]["Split"] == 3 and ops["full"]["Abs"] == 4
    # Only the first layer's input (the image) may be negative: one Abs, no Concat/Split.
    assert ops["lean"]["Abs"] == 1 and ops["lean"]["Concat"] == 0 and ops["lean"]["Split"] == 0
    assert ops["lean"]["Relu"] == 0  # every Relu moved into the next DAC's clip
    pools = [n for n in graphs["lean"].graph.node if n.op_type == "MaxPool"]
    assert len(pools) == 2 and all(n.name.startswith("chip/") for n in pools)  # before the ADC rounding
    # The next layer's DAC scale is in the plans (the runtime's ADC scales), not a Mul in the graph.
    plans = compile_model(model, get_profile("pcm"), calibration=x).plans
    assert [p.out_factor != 1.0 for p in plans] == [True, True, True, False]


def _ln_model(shared: bool) -> bytes:
    """x → LayerNorm → MatMul(W) (→ also Add to the LN output when ``shared``)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "g"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
        numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "W"),
    ]
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["h"], axis=-1),
        helper.make_node("MatMul", ["h", "W"], ["y"]),
    ]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]
    if shared:
        outputs.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 8]))
    graph = helper.make_graph(
        nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])], outputs, inits
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


@pytest.mark.parametrize("shared", [False, True])
def test_layernorm_takes_the_dac_scale_only_when_the_layer_reads_it_alone(shared):
    x = np.random.default_rng(1).standard_normal((32, 8)).astype(np.float32)
    model = _ln_model(shared)
    graph = onnx.load_from_string(compile_model(model, get_profile("pcm"), calibration=x).graph)
    ln = next(n for n in graph.graph.node if n.op_type == "LayerNormalization")
    assert (ln.input[1] == "g") == shared  # scaled γ: a new constant
    rts = _pair(model, get_profile("pcm"), x)
    for seed in (1, 2):
        full, lean = (rts[k].run(x, age_s=AGE_S, seed=seed) for k in ("full", "lean"))
        for a, b in zip(full, lean):
            _assert_same(a, b, f"LayerNorm shared={shared}")


def test_sign_analysis():
    consts = {"lo0": np.float32(0.0), "lo-": np.float32(-1.0)}
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Add", ["f", "x"], ["a"]),
        helper.make_node("Clip", ["x", "lo0"], ["c0"]),
        helper.make_node("Clip", ["x", "lo-"], ["c-"]),
        helper.make_node("Concat", ["r", "c0"], ["cat+"], axis=1),
        helper.make_node("Concat", ["r", "x"], ["cat"], axis=1),
        helper.make_node("Softmax", ["x"], ["s"]),
    ]
    producers = {o: n for n in nodes for o in n.output}
    proven = {t: nonnegative(t, producers, consts) for t in ("x", "r", "p", "f", "a", "c0", "c-", "cat+", "cat", "s")}
    assert proven == {
        "x": False,
        "r": True,
        "p": True,
        "f": True,
        "a": False,
        "c0": True,
        "c-": False,
        "cat+": True,
        "cat": False,
        "s": True,
    }


def test_a_full_chip_and_an_old_format_chip_serve_the_lean_graph_with_the_same_outputs():
    import dataclasses

    model, x = _zoo("mlp-hwa", 16)
    full_chip = program_onnx(model, get_profile("pcm"), seed=0, calibration=x, lowering="full")
    assert full_chip.meta["graph_lowering"] == "full"
    old = dataclasses.replace(full_chip, meta={**full_chip.meta, "graph_format": 3})
    rt_full, rt_old = ChipRuntime(full_chip), ChipRuntime(old)
    assert rt_full.lowering == GraphLowering.FULL and rt_old.lowering == GraphLowering.LEAN
    assert any(p.out_factor != 1.0 for p in rt_old.plans) and all(p.lean for p in rt_old.plans)
    _assert_same(rt_full.run(x, age_s=AGE_S, seed=5)[0], rt_old.run(x, age_s=AGE_S, seed=5)[0], "old format")


FOREIGN = (
    "resnet18",
    "vit",
    "mobilenet_v2",
    "bert-tiny",
    "convtranspose-decoder",
    "lstm",
    "sklearn-scaler-mlp",
    "fp16-cnn",
)


#: The pcm profile without DAC/ADC rounding: the lowerings then differ by float rounding only,
#: which no layer amplifies.
PCM_CONTINUOUS = {"in_levels": 0, "out_levels": 0}


@pytest.mark.slow
@pytest.mark.parametrize("name", FOREIGN)
def test_lean_equals_full_on_foreign_models(name):
    """Same noise, same outputs. With DAC/ADC rounding a deep model is compared over three noise
    draws and judged by the median: resnet18 draws 1.8M per-MVM noise values per run, so a
    pre-rounding value within an ulp of a rounding boundary (~1e-6 per element) turns up in
    about one run in seven, with either sampler (seen: ziggurat seed 3, q16 seed 5), and its
    one-step flip then spreads to ~10 % of the outputs; a systematic difference shows in every
    draw. Without rounding (pcm-continuous) every output must agree. Every weight is fed
    (``embed_convs=False``): resnet18 is a large chip, whose read-outs embed their Conv weights,
    and onnxruntime's constant-weight Conv, fused differently in the two lowerings' graphs, adds
    in another order in each, which made a second of the three draws flip (seeds 1 and 2, 10 % of
    outputs; seed 3 none); that is the binding's float order, not the lowering's, and
    tests/test_conv_matmul.py bounds it."""
    from tests.foreign.corpus import case

    c = case(name)
    feeds = c.inputs(4, np.random.default_rng(0))
    for profile in ("ideal", "pcm-continuous", "pcm"):
        prof = get_profile("pcm", **PCM_CONTINUOUS) if profile == "pcm-continuous" else get_profile(profile)
        rts = _pair(c.upload, prof, feeds, embed_convs=False)
        if profile != "pcm":
            full, lean = (rts[k].run(feeds, age_s=AGE_S, seed=1) for k in ("full", "lean"))
            for a, b in zip(full, lean):
                _assert_same(a, b, f"{name} on {profile}")
            continue
        fractions = []
        for seed in (1, 2, 3):
            full, lean = (rts[k].run(feeds, age_s=AGE_S, seed=seed) for k in ("full", "lean"))
            fractions.append(max(_off_fraction(a, b) for a, b in zip(full, lean)))
        assert float(np.median(fractions)) <= FLIP_FRACTION, f"{name} on pcm: {fractions} of outputs differ"


def test_run_tensor_reads_a_folded_tensor_with_the_models_own_values():
    """Recalibration reads the last layer's input (a Relu output, folded in the lean graph: Relu
    moved, DAC scale applied) with run_tensor: it must see the values the model computes."""
    model, x = _zoo("mlp-hwa", 16)
    rts = _pair(model, get_profile("pcm"), x)
    tensor = [n for n in onnx.load_from_string(model).graph.node if n.op_type == "Gemm"][-1].input[0]
    full, lean = (rts[k].run_tensor(x, tensor, age_s=AGE_S, seed=3) for k in ("full", "lean"))
    assert full.min() >= 0 and full.max() > 0
    np.testing.assert_array_equal(lean, full)
