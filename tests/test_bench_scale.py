"""bench.scale's archive upload: the MLP saved with external data in a .tar is the MLP it
programs as one file (same graph, same weights), read through the service's archive path."""

from __future__ import annotations

import json

import onnx
from onnx import numpy_helper

from bench.scale import mlp, mlp_archive
from bench.scale_report import merged_models
from chipsim.compiler.archive import model_from_archive


def test_the_archived_mlp_is_the_plain_mlp(tmp_path):
    path = tmp_path / "m.tar"
    mlp_archive(24, path, layers=3, seed=5)
    got = onnx.load_from_string(model_from_archive(path.read_bytes()))
    want = onnx.load_from_string(mlp(24, layers=3, seed=5))
    assert [n.SerializeToString() for n in got.graph.node] == [n.SerializeToString() for n in want.graph.node]
    assert len(got.graph.initializer) == 3
    for g, w in zip(got.graph.initializer, want.graph.initializer, strict=True):
        assert g.name == w.name
        assert (numpy_helper.to_array(g) == numpy_helper.to_array(w)).all()
    assert not (tmp_path / "mlp").exists()  # the unpacked folder is removed


def test_merge_keeps_rows_it_does_not_rerun_with_their_command(tmp_path):
    path = tmp_path / "scale.json"
    old = {
        "machine": {"date": "d0", "command": "c0"},
        "models": [{"model": "resnet18", "v": 1}, {"model": "MLP big", "v": 2}],
    }
    path.write_text(json.dumps(old))
    new = [{"model": "resnet18", "v": 3, "measured": {"date": "d1", "command": "c1"}}]
    got = merged_models(path, new)
    assert [(m["model"], m["v"], m["measured"]["command"]) for m in got] == [
        ("resnet18", 3, "c1"),
        ("MLP big", 2, "c0"),
    ]
    assert merged_models(tmp_path / "absent.json", new) == new
