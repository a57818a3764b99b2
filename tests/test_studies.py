"""The study commands (studies/): the shared helpers, each command end to end on a small setting,
and the accuracy study against its committed report (same seeds → the same numbers)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from studies import common

REPO = Path(__file__).resolve().parent.parent
ACCURACY_REPORT = REPO / "reports" / "accuracy" / "results.json"


# --------------------------------------------------------------------------- studies.common
def test_read_zoo_follows_the_index_and_names_unknown_models():
    index = json.loads((common.ZOO_DIR / "index.json").read_text())
    models = common.read_zoo()
    assert [m.name for m in models] == [e["name"] for e in index["models"]]
    cnn = common.read_zoo(names=["cnn-hwa"])[0]
    assert cnn.onnx == (common.ZOO_DIR / "cnn-hwa.onnx").read_bytes()
    assert cnn.x.dtype == np.float32 and cnn.x.shape[1:] == (1, 8, 8) and cnn.y.dtype == np.int64
    assert len(cnn.x) == len(cnn.y) == cnn.entry["n_eval"]
    with pytest.raises(ValueError, match="no-such-model"):
        common.read_zoo(names=["no-such-model"])


def test_markdown_cells():
    assert common.mean_std([0.5, 0.7]) == "60.00 ± 10.00"
    assert common.mean_std([0.5, 0.7], 1) == "60.0 ± 10.0"
    assert common.mean_std([1.5, 2.5], 2, scale=1.0) == "2.00 ± 0.50"
    assert common.mean_std([]) == "–"
    assert common.md_row(["a", "1"]) == "| a | 1 |"
    assert (common.fixed(0.123456), common.fixed(float("nan")), common.fixed(float("inf"))) == ("0.12", "–", "∞")
    assert (common.significant(0.012345), common.significant(float("inf"))) == ("0.012", "∞")


def test_age_schedule_is_the_services():
    """The accuracy study and the service's evaluation schedule read chips at the same ages."""
    assert list(common.AGE_SCHEDULE.values()) == [
        1.0,
        3600.0,
        86400.0,
        7 * 86400.0,
        30 * 86400.0,
        365 * 86400.0,
        3650 * 86400.0,
    ]


# --------------------------------------------------------------------------- studies.accuracy
def test_accuracy_study_reproduces_the_committed_report():
    """Chip seed 0 of cnn-hwa at every age, GDC on and off, on the serving path: exactly the
    committed report's first chip instance (the same seeds give the same read-out and noise)."""
    from studies.accuracy import age_study

    committed = json.loads(ACCURACY_REPORT.read_text())["ages"]["cnn-hwa"]
    ages = age_study(common.read_zoo(names=["cnn-hwa"])[0], n_chips=1)
    for gdc in ("gdc_on", "gdc_off"):
        assert list(ages[gdc]) == list(common.AGE_SCHEDULE)
        assert [v[0] for v in ages[gdc].values()] == [committed[gdc][a][0] for a in common.AGE_SCHEDULE], gdc


@pytest.mark.slow  # two interpreter subprocesses
def test_models_report_is_an_alias_of_studies_accuracy():
    out = [
        subprocess.run([sys.executable, "-m", mod, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
        for mod in ("models.report", "studies.accuracy")
    ]
    assert out[0].returncode == out[1].returncode == 0, out[0].stderr + out[1].stderr
    assert "--render-only" in out[0].stdout
    assert out[0].stdout == out[1].stdout


@pytest.mark.slow  # programs 6 models × 17 chips
def test_accuracy_command_small(tmp_path):
    from studies.accuracy import main

    main(["--chips", "1", "--repeats", "1", "--skip-ste", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert [m["name"] for m in results["models"]] == [m.name for m in common.read_zoo()]
    assert all(f["mu"] > 0 for f in (r["fit"] for r in results["robustness"].values()))
    text = (tmp_path / "README.md").read_text()
    assert "## Verdict" in text and "python -m studies.accuracy" in text
    for png in ("accuracy_vs_age.png", "accuracy_vs_age_gdc.png", "robustness.png"):
        assert (tmp_path / png).stat().st_size > 10_000


# --------------------------------------------------------------------------- recalibration studies
@pytest.mark.slow  # the whole study: 200 steps per run, report and plot
def test_recalibration_least_squares_command_small(tmp_path):
    from studies.recalibration_least_squares import main, run_specs

    assert main(["--steps", "200", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "least_squares.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| run ")]
    assert len(rows) == len(run_specs())
    assert "## Reading" in text and "python -m studies.recalibration_least_squares --steps 200" in text
    assert (tmp_path / "least_squares.png").stat().st_size > 10_000


@pytest.mark.slow  # programs and recalibrates 4 chips × 3 algorithms
def test_recalibration_digits_command_small(tmp_path):
    from studies.recalibration_digits import AGES, SCENARIOS, main

    args = ["--seeds", "1", "--steps", "5", "--readouts", "1", "--models", "mlp-hwa", "--n-recal", "100"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    text = (tmp_path / "digits.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| profile ")]
    assert len(rows) == len(SCENARIOS) * len(AGES) * (1 + 3)  # GDC alone + three algorithms
    assert "mlp-hwa: last layer" in text and "## Reading" in text
    assert (tmp_path / "digits.png").stat().st_size > 10_000
