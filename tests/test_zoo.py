"""The committed model zoo: every file loads, carries its metadata, ships its eval set, reaches
its recorded FP accuracy, runs on a pcm chip; the report was generated from these files."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest

from models.data import load_split
from models.export import ANALOG_OPS, PREFIX, metadata, onnx_logits

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "models" / "zoo"
REPORT = ROOT / "reports" / "accuracy"
INDEX = json.loads((ZOO / "index.json").read_text())
ENTRIES = INDEX["models"]
REQUIRED = {"mlp-plain", "mlp-hwa", "cnn-plain", "cnn-hwa", "transformer-hwa"}
META_KEYS = (
    "input_ranges",
    "task",
    "num_classes",
    "dataset",
    "split",
    "recipe",
    "fp_accuracy",
    "eval_set",
    "input_name",
)


def test_index_lists_the_required_models():
    names = {e["name"] for e in ENTRIES}
    assert REQUIRED <= names
    assert INDEX["default"] == "cnn-hwa" and "cnn-hwa" in names
    for e in ENTRIES:
        assert e["hwa"] == e["name"].endswith("-hwa")


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_zoo_file_loads_with_metadata(entry):
    path = ZOO / entry["file"]
    model_bytes = path.read_bytes()
    assert len(model_bytes) < 1 << 20  # small enough to embed in the service
    assert hashlib.sha256(model_bytes).hexdigest() == entry["sha256"]
    om = onnx.load_from_string(model_bytes)
    onnx.checker.check_model(om)
    meta = metadata(om)
    for key in META_KEYS:
        assert PREFIX + key in meta, key
    assert meta[PREFIX + "task"] == "classification" and meta[PREFIX + "num_classes"] == "10"
    assert meta[PREFIX + "input_name"] == om.graph.input[0].name
    assert meta[PREFIX + "eval_set"] == entry["eval_set"]
    recipe = json.loads(meta[PREFIX + "recipe"])
    assert recipe["recipe"] == ("hwa" if entry["hwa"] else "plain")
    assert {"epochs", "lr", "seed", "arch"} <= set(recipe)
    if entry["hwa"]:
        assert {"noise_scale", "fault_scale", "age_min_s", "age_max_s", "profile"} <= set(recipe["noise"])
    # every analog node has a positive DAC input range keyed by its weight initializer
    inits = {t.name for t in om.graph.initializer}
    analog = {n.input[1] for n in om.graph.node if n.op_type in ANALOG_OPS and len(n.input) > 1 and n.input[1] in inits}
    ranges = json.loads(meta[PREFIX + "input_ranges"])
    assert set(ranges) == analog
    assert all(math.isfinite(r) and r > 0 for r in ranges.values())


@pytest.mark.parametrize("entry", ENTRIES, ids=[e["name"] for e in ENTRIES])
def test_zoo_model_reaches_its_recorded_fp_accuracy(entry):
    model_bytes = (ZOO / entry["file"]).read_bytes()
    ev = np.load(ZOO / entry["eval_set"])
    x, y = ev["x"], ev["y"]
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (len(y), 1, 8, 8)
    # the shipped eval set is the documented split (regenerable from scikit-learn)
    test = load_split("test")
    np.testing.assert_array_equal(x, test.x)
    np.testing.assert_array_equal(y, test.y)
    acc = float((onnx_logits(model_bytes, x).argmax(1) == y).mean())
    recorded = float(metadata(model_bytes)[PREFIX + "fp_accuracy"])
    # Recorded with onnxruntime from these very files; a different CPU's float rounding may flip
    # at most a near-tie argmax, so allow one image (1/450 = 0.22 pp) and nothing more.
    assert abs(acc - recorded) <= 1 / len(y) + 1e-9
    assert recorded == pytest.approx(entry["fp_accuracy"], abs=1e-6)
    assert recorded > 0.95  # digits: every zoo model is a real classifier


def test_default_model_works_on_an_aged_pcm_chip():
    # The service's embedded default on one chip, one year old, GDC on: the report measures
    # 98.3 ± 0.5 % over 10 chips (FP 99.1 %); 3 pp below FP is > 4 std away from the mean.
    from chipsim import get_profile
    from chipsim.compiler import program_onnx
    from chipsim.runtime import ChipRuntime

    entry = next(e for e in ENTRIES if e["name"] == INDEX["default"])
    ev = np.load(ZOO / entry["eval_set"])
    rt = ChipRuntime(program_onnx((ZOO / entry["file"]).read_bytes(), get_profile("pcm"), seed=0), threads=1)
    acc = float((rt.run(ev["x"], 365 * 86400.0, seed=0)[0].argmax(1) == ev["y"]).mean())
    assert acc > entry["fp_accuracy"] - 0.03


def test_report_is_generated_from_the_committed_zoo():
    results = json.loads((REPORT / "results.json").read_text())
    by_name = {m["name"]: m["sha256"] for m in results["models"]}
    assert by_name == {e["name"]: e["sha256"] for e in ENTRIES}, "rerun `python -m studies.accuracy`"
    assert results["n_chips"] >= 10
    for png in ("accuracy_vs_age.png", "accuracy_vs_age_gdc.png", "robustness.png"):
        assert (REPORT / png).stat().st_size > 10_000
    text = (REPORT / "README.md").read_text()
    assert all(name in text for name in by_name)


def test_logistic_midpoint_fit_recovers_known_parameters():
    from studies.robustness import fit_midpoint, logistic

    sigmas = np.logspace(-2, 1, 16)
    acc = logistic(sigmas, 0.97, math.log(0.8), 3.0, 0.1)
    fit = fit_midpoint(sigmas, acc, 0.1)
    assert fit["mu"] == pytest.approx(0.8, rel=1e-3) and fit["a"] == pytest.approx(0.97, abs=1e-3)
    assert fit["rmse"] < 1e-4
    # halfway between the maximum and chance, by construction of the parameterisation
    at_mu = logistic(np.array([fit["mu"]]), fit["a"], math.log(fit["mu"]), fit["k"], 0.1)[0]
    assert at_mu == pytest.approx((fit["a"] + 0.1) / 2)
