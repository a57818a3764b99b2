"""Study, benchmark and training commands write into a new folder unless told to replace committed files."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

import pytest

from models import outputs

REPO = Path(__file__).resolve().parent.parent
NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.setattr(outputs, "RUNS", tmp_path / "runs")
    return tmp_path / "runs"


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_default_is_a_new_folder_per_run(runs, tmp_path):
    committed = tmp_path / "committed"
    first = outputs.output_dir("study", committed, None, False, ["r.json"], now=NOW)
    second = outputs.output_dir("study", committed, None, False, ["r.json"], now=NOW)
    assert first == runs / "study" / "20260102-030405" and second == runs / "study" / "20260102-030405-2"
    assert first.is_dir() and second.is_dir() and not committed.exists()


def test_replace_writes_the_committed_folder_and_out_is_never_overwritten_silently(runs, tmp_path):
    committed = tmp_path / "committed"
    assert outputs.output_dir("study", committed, None, True, ["r.json"]) == committed
    out = tmp_path / "mine"
    out.mkdir()
    (out / "r.json").write_text("kept")
    with pytest.raises(SystemExit, match=r"r\.json.*--replace"):
        outputs.output_dir("study", committed, out, False, ["r.json", "r.md"])
    assert (out / "r.json").read_text() == "kept"
    assert outputs.output_dir("study", committed, out, False, ["other.json"]) == out  # nothing to overwrite
    assert outputs.output_dir("study", committed, out, True, ["r.json"]) == out


def test_bench_chip_state_leaves_the_committed_results_alone(runs):
    from bench import chip_state

    before = _digests(chip_state.RESULTS)
    chip_state.main(["--rows", "32", "--cols", "32", "--repeats", "1"])
    assert _digests(chip_state.RESULTS) == before
    (written,) = (runs / "chip_state").iterdir()
    assert sorted(p.name for p in written.iterdir()) == ["chip_state.json", "chip_state.md"]


@pytest.mark.parametrize("command", [["models.build_zoo", "--only", "cnn-hwa"], ["models.train", "cnn-hwa"]])
def test_zoo_commands_refuse_to_overwrite_before_training(tmp_path, command):
    """An --out folder holding the model is refused at once (no training starts), unless --replace."""
    import importlib

    out = tmp_path / "zoo"
    out.mkdir()
    (out / "cnn-hwa.onnx").write_bytes(b"mine")
    module = importlib.import_module(command[0])
    with pytest.raises(SystemExit, match="--replace"):
        module.main([*command[1:], "--out", str(out)])
    assert (out / "cnn-hwa.onnx").read_bytes() == b"mine"
