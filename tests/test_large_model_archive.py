"""Models too large for one upload file (#20.7: 500M weights on 24 GB): an archive with external
data is bounded by its own settings, named when they refuse it, and the model it holds is bounded
by protobuf's limit on one message, not by the 1 GiB the loader used to impose."""

from __future__ import annotations

import io
import tarfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from fastapi.testclient import TestClient
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import CompileError, compile_model, driver, load_model, loader
from chipsim.compiler import archive as archive_module
from chipsim.compiler.archive import ArchiveLimitError, ArchiveLimits, model_from_archive
from service.app import create_app
from tests.service_helpers import err, make_settings

ROWS, COLS = 256, 64
#: Upload limit below the plain model (ROWS·COLS float32 = 64 KiB) and above its gzipped archive
#: (two bits of entropy per weight: ~4 KiB of weights; 7.4 KiB measured with the tar headers).
UPLOAD_LIMIT = 32 << 10


def _model(dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """y = Relu(x @ W + b): weights from four levels, so that a gzipped archive is small."""
    rng = np.random.default_rng(3)
    w = rng.choice(np.array([-0.5, -0.25, 0.25, 0.5], np.float32), (ROWS, COLS)) / np.float32(np.sqrt(ROWS))
    b = rng.standard_normal(COLS).astype(np.float32)
    np_type = helper.tensor_dtype_to_np_dtype(dtype)
    m = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"), helper.make_node("Add", ["m", "b"], ["a"])]
            + [helper.make_node("Relu", ["a"], ["y"])],
            "wide",
            [helper.make_tensor_value_info("x", dtype, ["N", ROWS])],
            [helper.make_tensor_value_info("y", dtype, ["N", COLS])],
            initializer=[
                numpy_helper.from_array(w.astype(np_type), "w"),
                numpy_helper.from_array(b.astype(np_type), "b"),
            ],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m.ir_version = 8
    return m


def _archive(tmp_path, model: onnx.ModelProto) -> bytes:
    """The model saved with its weights as external data, as a gzipped tar of its folder."""
    folder = tmp_path / "export"
    folder.mkdir()
    onnx.save(model, folder / "wide.onnx", save_as_external_data=True, location="wide.bin", size_threshold=0)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name in ("wide.onnx", "wide.bin"):
            tf.add(folder / name, f"wide/{name}")
    return buf.getvalue()


def test_a_model_over_the_upload_limit_programs_from_an_archive_and_matches_onnxruntime(tmp_path, zoo):
    model = _model()
    plain, archive = model.SerializeToString(), _archive(tmp_path, model)
    assert len(archive) < UPLOAD_LIMIT < len(plain)  # premise: only the archive fits the upload limit
    with TestClient(create_app(make_settings(tmp_path / "state", zoo, max_upload_bytes=UPLOAD_LIMIT))) as c:
        r = c.post("/program", files={"model": ("wide.onnx", plain, "x")}, data={"chip_id": "plain"})
        assert err(r) == (413, "body") and "AGEDCHIP_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]
        r = c.post(
            "/program",
            files={"model": ("wide.tar.gz", archive, "application/gzip")},
            data={"chip_id": "wide", "profile": "ideal"},
        )
        assert r.status_code == 201, r.text
        assert r.json()["weights"] == ROWS * COLS
        x = np.random.default_rng(4).standard_normal((3, ROWS)).astype(np.float32)
        r = c.post("/infer", json={"chip_id": "wide", "inputs": x.tolist(), "age": "1y", "seed": 0})
        assert r.status_code == 200, r.text
    got = np.asarray(r.json()["outputs"]["y"], np.float32)
    want = ort.InferenceSession(plain, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    # 'ideal' differs from digital by float32 rounding only (the foreign-model tests' bound)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert np.abs(want).max() > 0.1  # the comparison is not between zeros


@pytest.mark.parametrize(
    ("setting", "value", "limit"),
    [
        ("max_archive_bytes", 4096, "AGEDCHIP_MAX_ARCHIVE_BYTES"),
        ("max_archive_members", 1, "AGEDCHIP_MAX_ARCHIVE_MEMBERS"),
    ],
)
def test_an_archive_over_its_limits_is_refused_naming_the_setting(tmp_path, zoo, setting, value, limit):
    archive = _archive(tmp_path, _model())
    with TestClient(create_app(make_settings(tmp_path / "state", zoo, **{setting: value}))) as c:
        r = c.post("/program", files={"model": ("wide.tar.gz", archive, "application/gzip")}, data={"chip_id": "w"})
        assert err(r) == (422, "model")
        assert limit in r.json()["error"]["message"]
        assert c.get("/chips/w").status_code == 404


def test_archive_limit_errors_name_their_bound(tmp_path):
    archive = _archive(tmp_path, _model())
    for limits, bound in ((ArchiveLimits(max_bytes=4096), "max_bytes"), (ArchiveLimits(max_members=1), "max_members")):
        with pytest.raises(ArchiveLimitError) as info:
            model_from_archive(archive, limits)
        assert info.value.limit == bound and isinstance(info.value, CompileError)


def test_the_model_an_archive_holds_is_bounded_by_protobufs_limit_not_1_gib(tmp_path, monkeypatch):
    assert loader.MAX_MODEL_BYTES == 2**31 - 1  # protobuf's limit on one serialised message
    archive = _archive(tmp_path, _model())
    size = len(model_from_archive(archive))
    monkeypatch.setattr(archive_module, "MAX_MODEL_BYTES", size - 1)
    with pytest.raises(CompileError, match=rf"{size} bytes with its weights inside, more than protobuf's limit"):
        model_from_archive(archive)
    plain = _model().SerializeToString()
    load_model(plain)  # premise: within the limit it loads
    monkeypatch.setattr(loader, "MAX_MODEL_BYTES", len(plain) - 1)
    with pytest.raises(CompileError, match=rf"{len(plain)} bytes, more than protobuf's limit"):
        load_model(plain)


def test_an_fp16_model_whose_float32_widening_exceeds_protobufs_limit_is_refused(monkeypatch):
    half = _model(TensorProto.FLOAT16)
    compile_model(half.SerializeToString(), get_profile("ideal"))  # premise: it compiles within the limit
    monkeypatch.setattr(driver, "MAX_MODEL_BYTES", half.ByteSize() + ROWS * COLS)  # fp16 fits, fp32 does not
    with pytest.raises(CompileError, match=r"widened to float32 .* more than protobuf's limit"):
        compile_model(half.SerializeToString(), get_profile("ideal"))
