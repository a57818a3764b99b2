"""Per-MVM noise: one independent standard normal per analog output of every request (DESIGN §3.3).

The models here are built with onnx.helper on the ``ideal`` profile plus ADC output noise σ and
read with GDC off, so a chip's output is exactly ``digital + σ·r·s_col·ξ`` (no quantisation,
drift or weight noise; DAC range r = 1, the default). ``_xi`` recovers ξ from that formula — an
independent derivation from DESIGN §3.3, not from the compiled graph — and the tests check that
ξ is i.i.d. N(0, 1) along every axis of the output: samples, channels, pixels, tokens.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.runtime import ChipRuntime
from tests.mvm_noise_helpers import SIGMA, _model, _xi, matmul_classifier


def conv1x1_dynamic_hw(cin: int = 4, cols: int = 16) -> tuple[bytes, np.ndarray]:
    """A 1×1 Conv on (N, C, H, W) with N, H and W dynamic (a fully convolutional layer)."""
    w = np.random.default_rng(0).standard_normal((cols, cin, 1, 1)).astype(np.float32)
    model = _model(
        ["N", cin, "H", "W"],
        ["N", cols, "H", "W"],
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
        {"w": w},
    )
    return model, w.reshape(cols, cin).T


def token_mlp(c: int = 8, cols: int = 16) -> tuple[bytes, np.ndarray]:
    """A MatMul on (N, T, C) tokens with N and T dynamic (a variable-length transformer's MLP)."""
    w = np.random.default_rng(1).standard_normal((c, cols)).astype(np.float32)
    return _model(
        ["N", "T", c], ["N", "T", cols], [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": w}
    ), w


def seq_first_matmul(t: int = 5, c: int = 8, cols: int = 16) -> tuple[bytes, np.ndarray]:
    """A MatMul on sequence-first (T, N, C) activations, T static, N dynamic (torch's
    nn.MultiheadAttention without batch_first)."""
    w = np.random.default_rng(2).standard_normal((c, cols)).astype(np.float32)
    return _model([t, "N", c], [t, "N", cols], [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], {"w": w}), w


def gemm_trans_a(rows: int = 8, cols: int = 16) -> tuple[bytes, np.ndarray]:
    """Gemm(transA=1) on (K, N) inputs: the batch is on axis 1 of the input."""
    w = np.random.default_rng(3).standard_normal((rows, cols)).astype(np.float32)
    return _model(
        [rows, "N"], ["N", cols], [helper.make_node("Gemm", ["x", "w"], ["y"], name="gemm", transA=1)], {"w": w}
    ), w


def _runtime(model: bytes) -> ChipRuntime:
    return ChipRuntime(program_onnx(model, get_profile("ideal", out_noise=SIGMA), seed=3))


def _var_along(z: np.ndarray, axis: int | tuple[int, ...]) -> float:
    """Mean over the other axes of the variance along ``axis`` (ddof=1)."""
    return float(np.var(z, axis=axis, ddof=1).mean())


def test_noise_varies_per_pixel_on_dynamic_spatial_dims():
    model, matrix = conv1x1_dynamic_hw()
    rt = _runtime(model)
    x = np.random.default_rng(0).uniform(-1, 1, (4, 4, 9, 7)).astype(np.float32)  # H, W ≠ 1 at compile time
    z = _xi(rt, model, matrix, x, channel_axis=1, seed=5)
    # z has 4·16·63 = 4032 values. Variance across pixels: 64 groups (n, c) of 63 pixels, 3968 degrees of
    # freedom, relative standard error sqrt(2/3968) = 2.2 %; across channels: 252 groups of 16, 3780
    # dof, 2.3 %. 15 % is > 4.5 standard errors of their ratio. Noise shared by the pixels (the bug:
    # drawn for H = W = 1 and broadcast) gives a variance across pixels of 0.
    across_pixels, across_channels = _var_along(z.reshape(4, 16, -1), 2), _var_along(z, 1)
    assert abs(across_pixels / across_channels - 1) < 0.15, (across_pixels, across_channels)
    assert abs(across_channels - 1) < 0.15  # σ as DESIGN §3.3 says (same standard errors)


def test_noise_varies_per_token_on_a_dynamic_sequence_dim():
    model, matrix = token_mlp()
    rt = _runtime(model)
    x = np.random.default_rng(1).uniform(-1, 1, (4, 33, 8)).astype(np.float32)  # T = 33 ≠ 1 at compile time
    z = _xi(rt, model, matrix, x, channel_axis=2, seed=6)
    # 4·33·16 = 2112 values: across tokens 64 groups × 32 dof = 2048 dof (SE 3.1 %), across channels
    # 132 groups × 15 = 1980 dof (3.2 %): 15 % is > 3.3 standard errors of the ratio.
    across_tokens, across_channels = _var_along(z, 1), _var_along(z, 2)
    assert abs(across_tokens / across_channels - 1) < 0.15, (across_tokens, across_channels)
    assert abs(across_channels - 1) < 0.15


def test_sequence_first_matmul_runs_at_batch_2_with_noise_per_token_and_sample():
    model, matrix = seq_first_matmul()
    rt = _runtime(model)
    x = np.random.default_rng(2).uniform(-1, 1, (5, 2, 8)).astype(np.float32)
    zs = np.stack([_xi(rt, model, matrix, x, channel_axis=2, seed=s) for s in range(20)])  # (20, T, N, C)
    # Every (token, sample) pair gets its own draw: the correlation over the 20·16 (request, channel)
    # draws between any two positions is ~N(0, 1/320) (SE 0.056); shared noise gives exactly 1.
    flat = zs.transpose(1, 2, 0, 3).reshape(5 * 2, -1)
    corr = np.corrcoef(flat)
    off = corr[~np.eye(10, dtype=bool)]
    assert np.abs(off).max() < 0.3, np.round(corr, 2)  # 45 distinct pairs: 0.3 is 5.4 SE
    # 3200 values: the variance of N(0, 1) estimated within SE sqrt(2/3200) = 2.5 %.
    assert abs(float(zs.var()) - 1) < 0.1


def test_gemm_trans_a_with_the_batch_on_axis_1():
    model, matrix = gemm_trans_a()
    rt = _runtime(model)
    x = np.random.default_rng(3).uniform(-1, 1, (8, 3)).astype(np.float32)  # 3 samples, batch on axis 1
    zs = np.stack([_xi(rt, model, matrix, x, channel_axis=1, seed=s) for s in range(40)])  # (40, 3, 16)
    corr = np.corrcoef(zs.transpose(1, 0, 2).reshape(3, -1))
    # 640 draws per sample: correlations ~N(0, 1/640), SE 0.04; 0.2 is 5 SE.
    assert np.abs(corr[~np.eye(3, dtype=bool)]).max() < 0.2
    assert abs(float(zs.var()) - 1) < 0.15  # 1920 values: SE 3.2 %


def test_chunks_of_one_evaluation_get_independent_noise(monkeypatch, zoo, tmp_path):
    """POST /evaluate runs the eval set in chunks with one seed: sample k of every chunk must not
    get the same noise (it did: 100 % of samples), and the evaluation stays reproducible."""
    from service import chip_evaluation, served_chip
    from service.datasets import EvalSet
    from tests.service_helpers import make_settings

    model, matrix = matmul_classifier()
    chip = program_onnx(model, get_profile("ideal", out_noise=SIGMA), seed=3)
    x = np.random.default_rng(5).uniform(-1, 1, (32, 8)).astype(np.float32)
    x = np.concatenate([x, x])  # two chunks of 32 identical samples
    eval_set = EvalSet({"x": x}, np.zeros(len(x), np.int64))
    monkeypatch.setattr(chip_evaluation, "EVAL_CHUNK", 32)
    served = served_chip.ServedChip(chip, make_settings(tmp_path / "state", zoo), eval_set=eval_set)
    outs = [out for _, out in served.eval_outputs(eval_set, 0.0, read_seed=1, gdc=False)]
    assert [len(o) for o in outs] == [32, 32]
    digital = ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, {"x": x[:32]})[0]
    z0, z1 = ((o - digital) / (SIGMA * np.abs(matrix).max(axis=0)) for o in outs)
    # 512 draws per chunk: two independent chunks correlate ~N(0, 1/512), SE 0.044; 0.25 is 5.7 SE.
    assert abs(np.corrcoef(z0.ravel(), z1.ravel())[0, 1]) < 0.25
    again = [out for _, out in served.eval_outputs(eval_set, 0.0, read_seed=1, gdc=False)]
    for a, b in zip(outs, again):
        np.testing.assert_array_equal(a, b)  # seeded: bit-identical


# ----------------------------------------------------------------------------- independence
def shared_stretches(a: np.ndarray, b: np.ndarray, k: int = 4, tol: float = 1e-4) -> int:
    """How many runs of ``k`` consecutive values of ``b`` also occur consecutively in ``a`` (values
    equal within ``tol``): a window of a noise table that overlaps another shows up as a long run.

    For independent N(0, 1) values two quantised values agree with probability ~0.4·tol, a run of
    k = 4 with ~(4e-5)^4 = 2.6e-18 per pair of positions: < 1e-9 false runs for 1e4 × 1e4 positions.
    z recovered from outputs carries float32 rounding of ~3e-6 (see _xi), so a quantised pair of
    equal draws straddles a boundary with probability ~6 %: most runs of an overlap survive."""

    def grams(v: np.ndarray) -> list[tuple]:
        q = np.round(np.asarray(v, np.float64).ravel() / tol).astype(np.int64)
        return list(zip(*(q[i : len(q) - k + 1 + i] for i in range(k))))

    seen = set(grams(a))
    return sum(g in seen for g in grams(b))


@pytest.fixture(scope="module")
def head():
    """A chip of one MatMul (ideal + output noise), its model and matrix, and a batch of 64 copies of
    one input: every sample computes the same thing, so only the noise tells them apart."""
    model, matrix = matmul_classifier()
    x = np.repeat(np.random.default_rng(6).uniform(-1, 1, (1, 8)).astype(np.float32), 64, axis=0)
    return _runtime(model), model, matrix, x


def test_overlap_detector_finds_windows_of_a_small_table(head):
    """Power check: requests fed windows of a deliberately small table (2048 samples, requests of
    1024) through the runtime overlap, and the detector sees it in the outputs."""
    rt, model, matrix, x = head
    table = np.random.default_rng(7).standard_normal(2048).astype(np.float32)
    name = rt.noise_shapes(x)[0][0]
    z = [_xi(rt, model, matrix, x, channel_axis=1, noise={name: table[o : o + 1024]}) for o in (0, 300, 1024)]
    assert shared_stretches(z[0], z[1]) > 0.5 * (1024 - 300)  # 724 shared draws
    assert shared_stretches(z[0], z[2]) == 0  # adjacent windows share nothing


def test_noise_is_independent_across_samples_and_consecutive_requests(head):
    rt, model, matrix, x = head
    zs = np.stack([_xi(rt, model, matrix, x, channel_axis=1) for _ in range(40)])  # 40 unseeded requests
    # Distribution: 40·64·16 = 40960 draws of 40 *seeded* requests (seeds fixed, so the test is
    # deterministic; unseeded draws would fail this 1 %-level test one run in a hundred): the KS
    # statistic of N(0, 1) samples stays below 1.63/sqrt(n) with probability 0.99.
    from scipy import stats

    seeded = np.stack([_xi(rt, model, matrix, x, channel_axis=1, seed=1000 + i) for i in range(40)])
    assert stats.kstest(seeded.ravel(), "norm").statistic < 1.63 / np.sqrt(seeded.size)
    assert stats.kstest(zs.ravel(), "norm").statistic < 2.5 / np.sqrt(zs.size)  # unseeded: p ≈ 1e-5 level
    # Samples of one request: 64 copies of one input; each pair's correlation over 40·16 = 640 draws is
    # ~N(0, 1/640), SE 0.040: the mean of the 2016 pairs within ±0.005 (~5 SE of the mean, allowing
    # for their dependence), the largest within 0.2 (5 SE; 2016 pairs reach ~3.9 SE by chance).
    corr = np.corrcoef(zs.transpose(1, 0, 2).reshape(64, -1))
    off = corr[np.triu_indices(64, 1)]
    assert abs(off.mean()) < 0.005 and np.abs(off).max() < 0.2
    # Consecutive requests (lag 1): 1024 draws each, correlation SE 0.031; 39 pairs, mean SE 0.005.
    lag1 = [np.corrcoef(zs[i].ravel(), zs[i + 1].ravel())[0, 1] for i in range(39)]
    assert abs(np.mean(lag1)) < 0.025 and np.abs(lag1).max() < 0.16
    # No request shares a stretch of draws with any other (780 pairs).
    assert sum(shared_stretches(zs[i], zs[j]) for i in range(40) for j in range(i + 1, 40)) == 0


def test_seeded_noise_is_bit_identical_and_keyed_by_seed_and_chunk(head):
    rt, model, matrix, x = head
    run = lambda **kw: rt.run(x, age_s=0.0, gdc=False, **kw)[0]  # noqa: E731
    a = run(seed=11)
    np.testing.assert_array_equal(a, run(seed=11))
    np.testing.assert_array_equal(a, ChipRuntime(rt.chip).run(x, age_s=0.0, gdc=False, seed=11)[0])  # a restart
    np.testing.assert_array_equal(a, run(seed=11, chunk=0))
    z = {
        key: _xi(rt, model, matrix, x, channel_axis=1, seed=s, chunk=c)
        for key, (s, c) in {"a": (11, 0), "chunk1": (11, 1), "chunk2": (11, 2), "seed12": (12, 0)}.items()
    }
    keys = list(z)
    for i, p in enumerate(keys):
        for q in keys[i + 1 :]:
            # 1024 draws: correlation SE 0.031, 0.16 is 5 SE; and no shared stretch.
            assert abs(np.corrcoef(z[p].ravel(), z[q].ravel())[0, 1]) < 0.16, (p, q)
            assert shared_stretches(z[p], z[q]) == 0, (p, q)
    with pytest.raises(ValueError, match="chunk"):
        run(seed=11, chunk=-1)


def test_unseeded_noise_differs_between_threads_and_forked_processes(head):
    import multiprocessing
    import threading

    from chipsim.mvm_noise import thread_generator

    rt, model, matrix, x = head
    out: dict[int, np.ndarray] = {}
    threads = [
        threading.Thread(target=lambda i=i: out.__setitem__(i, _xi(rt, model, matrix, x, channel_axis=1)))
        for i in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert shared_stretches(out[0], out[1]) == 0 and abs(np.corrcoef(out[0].ravel(), out[1].ravel())[0, 1]) < 0.16
    # A forked child must not replay the parent's stream (its thread generator is re-seeded).
    thread_generator()
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        child = pool.apply(_child_draws)
    parent_next = thread_generator().standard_normal(4096, dtype=np.float32)
    assert shared_stretches(parent_next, child) == 0  # a replay would share all 61 runs of 4


def _child_draws() -> np.ndarray:
    from chipsim.mvm_noise import thread_generator

    return thread_generator().standard_normal(64, dtype=np.float32)


def test_noise_shapes_follow_each_input_signature():
    from chipsim.model_inputs import InputError

    model, _ = token_mlp()
    rt = _runtime(model)
    for shape in [(2, 5, 8), (3, 7, 8), (2, 5, 8)]:
        ((name, got),) = rt.noise_shapes(np.zeros(shape, np.float32))
        assert got == (*shape[:2], 16)
    # Shapes the model cannot take are the request's fault, named as such (check_inputs would refuse
    # this one first; NoiseShapes must not crash either).
    with pytest.raises(InputError, match="inputs"):
        rt._noise_shapes.shapes({"x": np.zeros((2, 5, 9), np.float32)})


def test_noise_shapes_onnx_inference_cannot_resolve_are_measured(monkeypatch):
    """After an op ONNX shape inference has no rule for (ai.onnx.ml.Scaler, as skl2onnx exports),
    the tile's output shape is measured by one onnxruntime run on zeros, once per input signature,
    and every output still gets its own draw."""
    from chipsim.mvm_noise import NoiseShapes

    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Scaler", ["x"], ["xs"], domain="ai.onnx.ml", scale=[1.0] * 6, offset=[0.0] * 6),
        helper.make_node("MatMul", ["xs", "w"], ["y"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    m.ir_version = 8
    model = m.SerializeToString()
    rt = _runtime(model)
    probed = []
    probe = NoiseShapes.probe
    monkeypatch.setattr(NoiseShapes, "probe", lambda self, dims, t: probed.append(dims) or probe(self, dims, t))
    for n in (1, 2000, 2000):
        ((_, got),) = rt.noise_shapes(np.zeros((n, 6), np.float32))
        assert got == (n, 4)
    assert probed == [{"x": (1, 6)}, {"x": (2000, 6)}]  # ONNX inference could not, and cached per signature
    xi = _xi(rt, model, w, rng.uniform(-1, 1, (2000, 6)).astype(np.float32), channel_axis=1, seed=1)
    # Per output column, 2000 draws across the batch: their std is 1 within 4 standard errors
    # (4/√(2·2000) = 0.089); noise broadcast over the batch (the bug of #20.1) would give 0.
    assert np.abs(xi.std(axis=0) - 1).max() < 0.089


def test_table_noise_is_deprecated_and_served_fresh(head, caplog):
    import logging

    from service.settings import Settings

    rt = head[0]
    with pytest.warns(DeprecationWarning, match="table"):
        assert ChipRuntime(rt.chip, noise="table").noise_source == "fresh"
    with pytest.raises(ValueError, match="noise"):
        ChipRuntime(rt.chip, noise="quantum")
    with caplog.at_level(logging.WARNING, logger="agedchip.service"):
        assert Settings(mvm_noise="table").mvm_noise == "fresh"
    assert "deprecated" in caplog.text
