"""ONNX export: the exported graph computes what torch computes, maps every analog layer to
an initializer weight with an input range, and runs on the chip's ideal path."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from chipsim import get_profile
from chipsim.compiler import program_onnx
from chipsim.runtime import ChipRuntime
from models import hwa
from models.data import load_split
from models.export import ANALOG_OPS, PREFIX, build_onnx, metadata, onnx_logits, write_zoo_entry
from models.train import RECIPES
from models.zoo_models import ARCHS, build

torch.set_num_threads(1)
# ONNX vs torch, float32: the bound. Measured: 1e-7 (MLP, CNN) to 7e-7 (transformer:
# LayerNorm and softmax accumulate in a different order in onnxruntime).
TOL = 1e-5


def _model(arch: str) -> torch.nn.Module:
    m = build(arch, seed=0)
    hwa.calibrate_input_ranges(m, torch.from_numpy(load_split("train").x[:128]))
    return m.eval()


def _x(n: int = 32) -> np.ndarray:
    return load_split("test").x[:n]


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_onnx_output_equals_torch(arch):
    m = _model(arch)
    model_bytes, _ = build_onnx(m)
    for n in (1, 7, 32):  # the batch axis is dynamic
        with torch.no_grad():
            ref = m(torch.from_numpy(_x(n))).numpy()
        out = onnx_logits(model_bytes, _x(n))
        assert out.shape == (n, 10)
        np.testing.assert_allclose(out, ref, rtol=0, atol=TOL)


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_analog_layer_is_an_initializer_with_a_range(arch):
    m = _model(arch)
    model_bytes, names = build_onnx(m)
    om = onnx.load_from_string(model_bytes)
    inits = {t.name for t in om.graph.initializer}
    analog = [n for n in om.graph.node if n.op_type in ANALOG_OPS and len(n.input) > 1 and n.input[1] in inits]
    layers = dict(hwa.analog_layers(m))
    assert len(analog) == len(layers)  # one analog node per torch layer, none left as a Constant
    assert not any(n.op_type == "Constant" and n.output[0] in {a.input[1] for a in analog} for n in om.graph.node)
    ranges = json.loads(metadata(om)[PREFIX + "input_ranges"])
    assert set(ranges) == {n.input[1] for n in analog} == set(names)
    for init, module in names.items():
        assert ranges[init] == pytest.approx(float(layers[module].input_range))
        assert ranges[init] > 0
    assert metadata(om)[PREFIX + "input_name"] == om.graph.input[0].name


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_ideal_chip_runs_the_export_like_torch(arch):
    # The serving path on the ideal profile (no noise, unbounded DAC, no ADC) must reproduce the
    # model: this is what makes the chip's accuracy comparable with the recorded FP accuracy.
    m = _model(arch)
    model_bytes, _ = build_onnx(m)
    rt = ChipRuntime(program_onnx(model_bytes, get_profile("ideal"), seed=0), threads=1)
    with torch.no_grad():
        ref = m(torch.from_numpy(_x())).numpy()
    np.testing.assert_allclose(rt.run(_x(), 0.0, seed=0)[0], ref, rtol=0, atol=TOL)


def test_write_zoo_entry(tmp_path):
    m = _model("mlp")
    entry = write_zoo_entry(m, "tiny", RECIPES["mlp-plain"], tmp_path, "an untrained MLP")
    model_bytes = (tmp_path / "tiny.onnx").read_bytes()
    meta = metadata(model_bytes)
    for key in (
        "input_ranges",
        "task",
        "num_classes",
        "dataset",
        "split",
        "recipe",
        "fp_accuracy",
        "eval_set",
        "input_name",
    ):
        assert PREFIX + key in meta, key
    ev = np.load(tmp_path / meta[PREFIX + "eval_set"])
    assert ev["x"].dtype == np.float32 and ev["y"].dtype == np.int64 and ev["x"].shape[1:] == (1, 8, 8)
    acc = float((onnx_logits(model_bytes, ev["x"]).argmax(1) == ev["y"]).mean())
    assert float(meta[PREFIX + "fp_accuracy"]) == pytest.approx(acc, abs=1e-6) == entry["fp_accuracy"]
    assert json.loads(meta[PREFIX + "recipe"])["recipe"] == "plain"
    assert entry["hwa"] is False and entry["file"] == "tiny.onnx"
