"""Graph bombs (issue #15, finding 7): what a model may allocate is bounded when it is
programmed (chipsim.compiler.bounds), and the service answers 422 naming the model.

Expected element counts are computed by hand from the models' shapes (tests/graph_bombs.py)."""

from __future__ import annotations

import onnx
import pytest
from fastapi.testclient import TestClient

from chipsim import get_profile
from chipsim.compiler import CompileError, compile_model
from chipsim.compiler.bounds import AllocationLimits, check_allocations
from service.app import create_app
from tests import graph_bombs as gb
from tests.service_helpers import err, make_settings, tiny_model

BIG = 1 << 40


def _check(model: bytes, batch: int, per_tensor: int = BIG, total: int = BIG):
    return check_allocations(onnx.load_from_string(model), AllocationLimits(batch, per_tensor, total))


def test_constant_of_shape_bomb_is_refused_statically():
    with pytest.raises(CompileError, match=r"'bomb'.*ConstantOfShape.*4,096,000,000 elements.*static"):
        _check(gb.constant_of_shape(), batch=1, per_tensor=1 << 28)
    # the same model with a harmless constant shape passes: the check is on the size, not the op
    report = _check(gb.constant_of_shape((8, 8)), batch=1, per_tensor=64)
    assert report.largest == ("bomb", 64)


def test_tensor_limit_is_evaluated_at_the_maximum_batch():
    model = gb.batch_outer_product(width=16)  # Tile (N, 64) by [1, 16] → N·1024 elements
    assert _check(model, batch=4, per_tensor=4 * 1024).largest == ("bomb", 4 * 1024)  # exactly at the limit
    with pytest.raises(CompileError, match=r"4,096 elements at batch 4"):
        _check(model, batch=4, per_tensor=4 * 1024 - 1)
    with pytest.raises(CompileError, match=r"4,194,304 elements at batch 4096"):
        _check(model, batch=4096, per_tensor=1 << 20)


def test_total_limit_sums_every_intermediate():
    model = gb.batch_outer_product(width=16)  # y: N·10, bomb: N·1024
    assert _check(model, batch=2, total=2 * (10 + 1024)).total_elements == 2 * 1034
    with pytest.raises(CompileError, match=r"2,068 elements together at batch 2"):
        _check(model, batch=2, total=2 * 1034 - 1)


def test_value_dependent_shape_is_refused():
    with pytest.raises(CompileError, match=r"'bomb'.*Expand.*depends on values computed at run time.*'dims'"):
        _check(gb.data_dependent_expand(), batch=1)


def test_unknown_shape_is_measured_by_a_trial_run_and_scaled_to_the_batch():
    model = gb.reshape_by_computed_shape()  # Reshape(x (N, 64)) → N·64 elements, unknown statically
    report = _check(model, batch=8, per_tensor=8 * 64)
    assert "bomb" in report.measured and report.largest == ("bomb", 8 * 64)
    with pytest.raises(CompileError, match=r"'bomb'.*512 elements at batch 8 \(a trial run"):
        _check(model, batch=8, per_tensor=8 * 64 - 1)


def test_sparse_initializer_is_refused_by_name_with_or_without_limits():
    with pytest.raises(CompileError, match=r"sparse_initializer 'big' \(64000×64000\)"):
        compile_model(gb.sparse_initializer(), get_profile("pcm"))
    with pytest.raises(CompileError, match="sparse_initializer"):
        _check(gb.sparse_initializer(), batch=1)


def test_the_zoo_shaped_model_passes_the_service_defaults():
    s = make_settings("unused", "unused")
    report = _check(tiny_model(), batch=s.max_batch, per_tensor=s.max_tensor_elements, total=s.max_graph_elements)
    assert report.largest[1] == s.max_batch * 64  # Flatten of (N, 1, 8, 8)


@pytest.mark.parametrize(
    "bomb, words",
    [
        (gb.constant_of_shape(), "ConstantOfShape"),
        (gb.batch_outer_product(width=2048), "AGEDCHIP_MAX_TENSOR_ELEMENTS"),  # 4096·64·2048 = 2^29
        (gb.data_dependent_expand(), "depends on values"),
        (gb.sparse_initializer(), "sparse_initializer"),
    ],
)
def test_service_refuses_bombs_with_422_naming_the_model(tmp_path, zoo, bomb, words):
    with TestClient(create_app(make_settings(tmp_path, zoo, default_model="")), raise_server_exceptions=False) as c:
        r = c.post("/program", files={"model": ("bomb.onnx", bomb, "application/octet-stream")})
        assert err(r) == (422, "model"), r.text
        assert words in r.json()["error"]["message"]
        assert c.get("/chips").json()["chips"] == []
