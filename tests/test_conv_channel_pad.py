"""A tiled Conv's channel slices are padded to a multiple of ``CONV_CHANNEL_ALIGN`` (graph format 5):
zero channels in, zero weights on them, so every product, and with it every output, is unchanged.

Checked on a Conv whose 10 channels × 3×3 kernel split into tiles of 3, 3, 2 and 2 channels
(``tile_rows`` 27), against the same chip compiled without padding (same seed, same per-MVM noise)
and, on the ``ideal`` profile, against onnxruntime on the original model.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import chipsim.compiler.lowering as lowering
from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.ort_session import cpu_session
from chipsim.runtime import ChipRuntime

AGE_S = 86400.0
CHANNELS, COUT, KERNEL, TILE_ROWS = 10, 8, 3, 27  # ≤ 3 channels per tile → 4 tiles: 3, 3, 2, 2


def _conv_model(groups: int = 1) -> bytes:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((COUT, CHANNELS // groups, KERNEL, KERNEL)).astype(np.float32) * 0.3
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CHANNELS, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", COUT, 6, 6])
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], group=groups),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    graph = helper.make_graph(nodes, "conv", [x], [y], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _x(n: int = 16) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, (n, CHANNELS, 6, 6)).astype(np.float32)


def _weight_channels(graph: bytes) -> list[int]:
    """Channel count of every 4-D weight input of a compiled graph."""
    g = onnx.load_from_string(graph).graph
    dims = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input]
    return [d[1] for d in dims if len(d) == 4 and d[0] > 0 and d[1] > 0 and d[2] == KERNEL]


def _run(profile, align: int, monkeypatch, seed: int = 3) -> tuple[np.ndarray, ChipRuntime]:
    monkeypatch.setattr(lowering, "CONV_CHANNEL_ALIGN", align)
    chip = program_onnx(_conv_model(), profile, seed=0, calibration=_x())
    rt = ChipRuntime(chip, threads=1)
    return rt.run(_x(), age_s=AGE_S, seed=seed)[0], rt


def test_tiles_take_padded_channel_slices(monkeypatch):
    _, rt = _run(get_profile("pcm", tile_rows=TILE_ROWS), lowering.CONV_CHANNEL_ALIGN, monkeypatch)
    plan = rt.plans[0]
    assert [b - a for a, b in plan.tile_channels] == [3, 3, 2, 2]
    chans = _weight_channels(rt.graph)
    assert chans and all(c == 4 for c in chans), chans  # 3 → 4 and 2 → 4: a multiple of 4
    assert sum(n.op_type == "Pad" for n in onnx.load_from_string(rt.graph).graph.node) == 4
    _, unpadded = _run(get_profile("pcm", tile_rows=TILE_ROWS), 1, monkeypatch)
    assert sorted(_weight_channels(unpadded.graph)) == sorted([3, 3, 2, 2] * (len(chans) // 4))
    # each chip's plans carry the alignment it was compiled with, so the weight packing follows
    # the chip's graph whatever the compiler's current setting: both run side by side
    assert (plan.channel_align, unpadded.plans[0].channel_align) == (4, 1)
    x = _x()
    assert rt.run(x, age_s=AGE_S, seed=1)[0].shape == unpadded.run(x, age_s=AGE_S, seed=1)[0].shape


@pytest.mark.parametrize("lowering_name", ["lean", "full"])
def test_padding_changes_no_output_for_the_same_noise(monkeypatch, lowering_name):
    # The same chip (same seed) with and without padding, the same seeded per-MVM noise: zero
    # channels add exact zeros to every product, so outputs agree to float rounding (the products'
    # summation order may differ); an ADC rounding flip would need a value within ~1e-7 of a
    # boundary, so 1e-5 of the largest output bounds every element (576 outputs × 16 samples).
    profile = get_profile("pcm", tile_rows=TILE_ROWS)
    outs = []
    for align in (1, 4):
        monkeypatch.setattr(lowering, "CONV_CHANNEL_ALIGN", align)
        chip = program_onnx(_conv_model(), profile, seed=0, calibration=_x(), lowering=lowering_name)
        outs.append(ChipRuntime(chip, threads=1, lowering=lowering_name).run(_x(), age_s=AGE_S, seed=3)[0])
    scale = float(np.abs(outs[0]).max())
    assert scale > 0
    np.testing.assert_allclose(outs[1], outs[0], rtol=0, atol=1e-5 * scale)
    # power: a different noise seed moves the outputs far beyond that tolerance
    monkeypatch.setattr(lowering, "CONV_CHANNEL_ALIGN", 4)
    chip = program_onnx(_conv_model(), profile, seed=0, calibration=_x(), lowering=lowering_name)
    other = ChipRuntime(chip, threads=1, lowering=lowering_name)
    assert np.abs(other.run(_x(), age_s=AGE_S, seed=4)[0] - outs[1]).max() > 1e-3 * scale


def test_ideal_profile_equals_onnxruntime_with_padding():
    model = _conv_model()
    chip = program_onnx(model, get_profile("ideal", tile_rows=TILE_ROWS), seed=0, calibration=_x())
    got = ChipRuntime(chip, threads=1).run(_x(), age_s=AGE_S)[0]
    want = cpu_session(model, 1).run(None, {"x": _x()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_grouped_conv_tiles_are_not_padded():
    # a grouped layer's tiles gather a slice of every group (no zero channel to pad with): unchanged
    chip = program_onnx(_conv_model(groups=2), get_profile("pcm", tile_rows=TILE_ROWS), seed=0, calibration=_x())
    rt = ChipRuntime(chip, threads=1)
    assert all(lowering.tile_channel_pad(p, k) == 0 for p in rt.plans for k in range(len(p.tiles)))
    assert not any(n.op_type == "Pad" for n in onnx.load_from_string(rt.graph).graph.node)
