"""models.fmnist_runs: finished training runs kept in the repository, whole or not at all."""

from __future__ import annotations

import json

import pytest

from models import fmnist_runs as R


def _run(folder, onnx=b"onnx-bytes"):
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({"onnx": "m.onnx"}))
    (folder / "m.onnx").write_bytes(onnx)
    for name in ("model.pt", "recipe.json", "history.jsonl", "checkpoint.pt"):
        (folder / name).write_bytes(name.encode())
    return folder


def test_a_run_is_kept_without_its_checkpoint_and_byte_for_byte(tmp_path):
    run = _run(tmp_path / "train" / "resnet-fmnist-hwa-s1")
    dest = R.keep(run, tmp_path / "kept")
    assert dest == tmp_path / "kept" / "resnet-fmnist-hwa-s1"
    assert sorted(p.name for p in dest.iterdir()) == sorted(["m.onnx", *R.FILES])
    assert (dest / "m.onnx").read_bytes() == b"onnx-bytes"
    assert not list((tmp_path / "kept").glob(".*tmp"))
    # keeping the same run again changes nothing; another run under the same name is refused
    assert R.keep(run, tmp_path / "kept") == dest
    other = _run(tmp_path / "other" / "resnet-fmnist-hwa-s1", onnx=b"retrained")
    with pytest.raises(SystemExit, match="m.onnx"):
        R.keep(other, tmp_path / "kept")
    assert (dest / "m.onnx").read_bytes() == b"onnx-bytes"


def test_an_unfinished_run_is_refused_by_name(tmp_path):
    run = _run(tmp_path / "r")
    (run / "model.pt").unlink()
    with pytest.raises(SystemExit, match="missing model.pt"):
        R.keep(run, tmp_path / "kept")
    (run / "result.json").unlink()
    with pytest.raises(SystemExit, match="no result.json"):
        R.keep(run, tmp_path / "kept")
    assert not (tmp_path / "kept" / "r").exists()
