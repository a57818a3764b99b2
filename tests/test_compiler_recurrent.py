"""Compiler op coverage of the recurrent ops LSTM/GRU/RNN (unrolled and as a Scan, from ONNX and
from torch export): the ideal chip equals onnxruntime on the original model; the pcm chip equals
a numpy LSTM over the reference analog MVMs (chipsim.reference) with the same noise draws."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.compiler.rewriters import recurrent
from chipsim.readout import read
from chipsim.reference import MvmNoise, analog_matmul
from chipsim.runtime import ChipRuntime
from tests.compiler_op_helpers import AGES, GATES, _ort, _rel_err, recurrent_model

torch = pytest.importorskip("torch")
torch.set_num_threads(1)


RECURRENT_CASES = {
    **{
        f"{op}-{d}-layout{lay}-{extra}": (op, dict(direction=d, layout=lay, **kw))
        for op in GATES
        for d in ("forward", "reverse", "bidirectional")
        for lay in (0, 1)
        for extra, kw in (("plain", {}), ("lens-h0-c0", dict(seq=True, h0=True, c0=op == "LSTM")))
    },
    **{f"{op}-no-bias": (op, dict(bias=False, direction="bidirectional")) for op in GATES},
    **{f"{op}-clip": (op, dict(clip=0.7, h0=True)) for op in GATES},
    "LSTM-peepholes": ("LSTM", dict(peep=True, h0=True, c0=True, direction="bidirectional")),
    "LSTM-input-forget": ("LSTM", dict(input_forget=1, h0=True)),
    "GRU-linear-before-reset": ("GRU", dict(linear_before_reset=1, h0=True, direction="bidirectional", seq=True)),
    "LSTM-activations": (
        "LSTM",
        dict(
            activations=["HardSigmoid", "LeakyRelu", "Softsign"],
            activation_alpha=[0.3, 0.05],
            activation_beta=[0.4],
            h0=True,
        ),
    ),
    "GRU-activations": (
        "GRU",
        dict(
            activations=["Sigmoid", "Elu", "Sigmoid", "Relu"],
            direction="bidirectional",
            activation_alpha=[0.7],
            h0=True,
        ),
    ),
    "RNN-relu": ("RNN", dict(activations=["Relu"], h0=True)),
    "LSTM-lens-zero-state": ("LSTM", dict(seq=True, direction="bidirectional")),
}


def _recurrent_equals_onnxruntime(op, kw):
    model, feeds = recurrent_model(op, **kw)
    reference = recurrent_model(op, **{**kw, "layout": 0})[0]  # onnxruntime runs layout 0 only
    chip = program_onnx(model, get_profile("ideal"), seed=0)
    assert _rel_err(ChipRuntime(chip).run(feeds, age_s=0.0, seed=0), _ort(reference, feeds)) <= 1e-5
    return chip


@pytest.mark.parametrize("op, kw", RECURRENT_CASES.values(), ids=RECURRENT_CASES.keys())
def test_recurrent_op_on_the_ideal_chip_equals_onnxruntime(op, kw):
    chip = _recurrent_equals_onnxruntime(op, kw)
    dirs = 2 if kw.get("direction") == "bidirectional" else 1
    split_r = op == "GRU" and not kw.get("linear_before_reset")  # R's z,r rows and h rows: two layers
    assert len(chip.layers) == dirs * (3 if split_r else 2)
    # One set of devices per weight: W and R of every direction, nothing twice.
    assert chip.n_devices == 2 * GATES[op] * 6 * (4 + 6) * dirs
    onnx_ops = {n.op_type for n in onnx.load_from_string(chip.attachments["compiled.onnx"]).graph.node}
    assert "Scan" not in onnx_ops and op not in onnx_ops  # 5 steps: unrolled


@pytest.mark.parametrize(
    "case",
    [
        "LSTM-bidirectional-layout0-lens-h0-c0",
        "GRU-reverse-layout1-plain",
        "RNN-forward-layout0-lens-h0-c0",
        "LSTM-peepholes",
        "LSTM-lens-zero-state",
        "GRU-forward-layout0-plain",
        "GRU-linear-before-reset",
        "LSTM-input-forget",
        "LSTM-activations",
        "RNN-clip",
    ],
)
def test_recurrent_op_as_a_scan_on_the_ideal_chip_equals_onnxruntime(case, monkeypatch):
    monkeypatch.setattr(recurrent, "UNROLL_MAX_STEPS", 1)
    op, kw = RECURRENT_CASES[case]
    chip = _recurrent_equals_onnxruntime(op, kw)
    onnx_ops = {n.op_type for n in onnx.load_from_string(chip.attachments["compiled.onnx"]).graph.node}
    assert "Scan" in onnx_ops and op not in onnx_ops


class Seq(torch.nn.Module):
    """A torch recurrent layer (batch_first, 2 layers) with initial states, and a head."""

    def __init__(self, cell, bidirectional):
        super().__init__()
        torch.manual_seed(0)
        self.cell = cell
        self.rnn = getattr(torch.nn, cell)(5, 7, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.head = torch.nn.Linear(7 * (2 if bidirectional else 1), 3)

    def forward(self, x, h0, c0):
        # States come batch-first ([N, layers·D, H]): every model input leads with the batch.
        h0, c0 = h0.transpose(0, 1).contiguous(), c0.transpose(0, 1).contiguous()
        y, _ = self.rnn(x, (h0, c0) if self.cell == "LSTM" else h0)
        return self.head(y[:, -1])


@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_torch_recurrent_export_on_ideal_and_pcm(cell, bidirectional):
    import io
    import warnings

    dirs = 2 if bidirectional else 1
    rng = np.random.default_rng(0)
    feeds = {
        "x": rng.standard_normal((4, 6, 5)).astype(np.float32),
        "h0": rng.standard_normal((4, 2 * dirs, 7)).astype(np.float32) * 0.5,
        "c0": rng.standard_normal((4, 2 * dirs, 7)).astype(np.float32) * 0.5,
    }
    module = Seq(cell, bidirectional).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            tuple(torch.from_numpy(v) for v in feeds.values()),
            buf,
            input_names=list(feeds),
            output_names=["y"],
            opset_version=17,
            dynamo=False,
        )
    model = buf.getvalue()
    if cell != "LSTM":  # torch drops the unused c0 input
        feeds.pop("c0")
    want = _ort(model, feeds)
    chip = program_onnx(model, get_profile("ideal"), seed=0)
    # Per torch layer and direction: W and R; plus the head.
    assert len(chip.layers) == 2 * 2 * dirs + 1
    assert _rel_err(ChipRuntime(chip).run(feeds, age_s=0.0, seed=0), want) <= 1e-5
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0))
    outs = [rt.run(feeds, age_s=age, seed=1)[0] for age in AGES]
    assert all(o.shape == (4, 3) and np.all(np.isfinite(o)) for o in outs)
    assert not np.array_equal(outs[0], outs[2])  # drift changes the answer


@pytest.mark.parametrize(
    "unroll, dynamic", [(False, False), (True, False), (False, True)], ids=["scan", "unrolled", "scan-dynamic-length"]
)
def test_lstm_on_pcm_equals_numpy_lstm_over_reference_mvms(unroll, dynamic, monkeypatch):
    """An LSTM recomputed in numpy: W read once on every step's input, R read once per step on
    the previous hidden state (its own noise each time), gates in float64. With a dynamic
    sequence length the noise follows the request's length."""
    monkeypatch.setattr(recurrent, "UNROLL_MAX_STEPS", 10**6 if unroll else 1)
    model, feeds = recurrent_model("LSTM", T=4, N=3, I=4, H=6, h0=True, c0=True, layout=1, dynamic_length=dynamic)
    profile = get_profile("pcm")
    chip = program_onnx(model, profile, seed=3)
    w_layer, r_layer = chip.layers
    plan_w, plan_r = ChipRuntime(chip).plans
    # R: one read per step (h0 given): unrolled, 4 reads of [N, 4H]; a Scan, one of [N, T, 4H]
    # (T = 1 in the plan of a dynamic length: the compile-time placeholder).
    scan_shape = [1, 1 if dynamic else 4, 24]
    assert (plan_w.n_reads, plan_r.n_reads, plan_r.out_shape) == ((1, 4, [1, 24]) if unroll else (1, 1, scan_shape))
    rt = ChipRuntime(chip)
    noise = rt.draw_noise(feeds, np.random.default_rng(8))
    assert len(noise) == (5 if unroll else 2)
    if not unroll:  # the Scan's R noise: one draw per sample, step and column of this request
        assert noise[plan_r.input_names(0)["noise"]].shape == (3, 4, 24)
    got_y, got_h, got_c = rt.run(feeds, age_s=86400.0, noise=noise)
    ro = read(chip, 86400.0)
    o = onnx.load_from_string(model)
    b = numpy_helper.to_array(next(t for t in o.graph.initializer if t.name == "B"))[0].astype(np.float64)
    x, h, c = feeds["x"], feeds["h0"][:, 0].astype(np.float64), feeds["c0"][:, 0].astype(np.float64)
    n_w = noise[plan_w.input_names(0)["noise"]]  # (N, T, 4H)
    xw = analog_matmul(
        x.reshape(-1, 4), w_layer, ro.layers[0], profile, bias=False, noise=MvmNoise([n_w.reshape(-1, 24)])
    ).reshape(3, 4, 24)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    ys = []
    for t in range(4):
        n_r = (
            noise[plan_r.read_view(t).input_names(0)["noise"]]
            if unroll
            else noise[plan_r.input_names(0)["noise"]][:, t]
        )
        g = (
            xw[:, t]
            + b[:24]
            + b[24:]
            + analog_matmul(h, r_layer, ro.layers[1], profile, bias=False, noise=MvmNoise([n_r]))
        )
        i, o_, f, cc = np.split(g, 4, axis=1)
        c = sig(f) * c + sig(i) * np.tanh(cc)
        h = sig(o_) * np.tanh(c)
        ys.append(h)
    # float32 graph vs float64 reference: ~1e-7. A value within float rounding of a DAC/ADC step
    # would move by a step (≥ 1e-3 here); these seeds have none, so 1e-5 holds — and catches a
    # swapped or shared noise draw between two steps, which moves the outputs by ≥ 1.6e-2.
    np.testing.assert_allclose(got_y[:, :, 0], np.stack(ys, axis=1), atol=1e-5)
    np.testing.assert_allclose(got_h[:, 0], h, atol=1e-5)
    np.testing.assert_allclose(got_c[:, 0], c, atol=1e-5)


def test_dynamic_sequence_length_runs_as_a_scan_with_noise_drawn_per_request_length():
    import io
    import warnings

    torch.manual_seed(0)
    module = torch.nn.LSTM(5, 7, batch_first=True, bidirectional=True)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(2, 6, 5),),
            buf,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "N", 1: "T"}, "y": {0: "N", 1: "T"}},
            opset_version=17,
            dynamo=False,
        )
    model = buf.getvalue()
    rt = ChipRuntime(program_onnx(model, get_profile("ideal"), seed=0))
    for steps in (1, 3, 11):  # 1: the Scan after the first step runs zero times
        x = np.random.default_rng(steps).standard_normal((2, steps, 5)).astype(np.float32)
        assert _rel_err(rt.run(x, age_s=0.0)[:1], _ort(model, {"x": x})[:1]) <= 1e-5
    # pcm: noise shaped by each request's length (W and R of both directions: every step; torch
    # exports a zero initial state, which R reads); a seeded request is bit-identical, another
    # seed differs.
    rt = ChipRuntime(program_onnx(model, get_profile("pcm"), seed=0))
    for steps in (1, 3, 11):
        x = np.random.default_rng(steps).standard_normal((2, steps, 5)).astype(np.float32)
        assert [s for _, s in rt.noise_shapes(x)] == [(2, steps, 28)] * 4  # 4·H = 28 columns
        y = rt.run(x, age_s=3600.0, seed=5)[0]
        assert y.shape == (2, steps, 14) and np.all(np.isfinite(y))
        np.testing.assert_array_equal(y, rt.run(x, age_s=3600.0, seed=5)[0])
        assert not np.array_equal(y, rt.run(x, age_s=3600.0, seed=6)[0])
