"""Models with external data uploaded as archives (#13): a good archive compiles; hostile ones —
path traversal, absolute paths, links, devices, bombs, too many members, external-data
locations leaving the folder — are refused before anything outside a private folder is read
or written."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from chipsim import get_profile
from chipsim.compiler import CompileError, compile_model
from chipsim.compiler.archive import ArchiveLimits, is_archive, model_from_archive


def _model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    m = helper.make_model(
        helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="fc")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 32])],
            initializer=[w],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    m.ir_version = 8
    return m


def _external_files(tmp: Path, location: str = "weights.bin") -> dict[str, bytes]:
    """The files ``onnx.save(..., save_as_external_data=True)`` writes: the model and its data."""
    out = tmp / "export"
    out.mkdir()
    onnx.save(_model(), out / "model.onnx", save_as_external_data=True, location=location, size_threshold=0)
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}


def _zip(files: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _tar(files: dict[str, bytes], extra: list[tarfile.TarInfo] = (), mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return buf.getvalue()


def test_premise_the_external_data_model_is_refused_as_a_plain_upload(tmp_path):
    files = _external_files(tmp_path)
    assert set(files) == {"model.onnx", "weights.bin"}
    with pytest.raises(CompileError, match=r"external data.*\.zip or \.tar"):
        compile_model(files["model.onnx"], get_profile("ideal"))


@pytest.mark.parametrize("pack", [_zip, _tar, lambda f: _tar(f, mode="w:gz")], ids=["zip", "tar", "tar.gz"])
def test_archive_with_external_data_compiles_like_the_embedded_model(tmp_path, pack):
    files = _external_files(tmp_path)
    data = pack({"export/" + k: v for k, v in files.items()})  # in a folder, as people zip them
    assert is_archive(data) and not is_archive(_model().SerializeToString())
    model = model_from_archive(data)
    loaded = onnx.load_from_string(model)
    assert all(t.data_location == TensorProto.DEFAULT for t in loaded.graph.initializer)
    want = numpy_helper.to_array(_model().graph.initializer[0])
    assert np.array_equal(numpy_helper.to_array(loaded.graph.initializer[0]), want)
    assert compile_model(model, get_profile("ideal")).specs[0].weight.shape == (64, 32)


def assert_refused(data: bytes, match: str, limits: ArchiveLimits = ArchiveLimits()) -> None:
    with pytest.raises(CompileError, match=match):
        model_from_archive(data, limits)


def test_members_that_would_leave_the_folder_are_refused(tmp_path):
    files = _external_files(tmp_path)
    victim = tmp_path / "victim.txt"
    for name in ("../victim.txt", "a/../../victim.txt", str(victim), "/etc/passwd", "C:/x.onnx", "a\\..\\b"):
        for pack in (_zip, _tar):
            assert_refused(pack({**files, name: b"pwned"}), r"archive member .*(\.\.|absolute|backslash)")
    assert not victim.exists()


def test_links_devices_and_fifos_are_refused(tmp_path):
    files = _external_files(tmp_path)
    link = tarfile.TarInfo("weights.bin")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    assert_refused(_tar({"model.onnx": files["model.onnx"]}, [link]), "symlink")
    hard = tarfile.TarInfo("weights.bin")
    hard.type, hard.linkname = tarfile.LNKTYPE, "model.onnx"
    assert_refused(_tar({"model.onnx": files["model.onnx"]}, [hard]), "hardlink")
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
        dev = tarfile.TarInfo("weights.bin")
        dev.type = kind
        assert_refused(_tar({"model.onnx": files["model.onnx"]}, [dev]), "device or FIFO")
    assert_refused(_zip(files, modes={"weights.bin": stat.S_IFLNK | 0o777}), "symlink")


def test_sizes_counts_and_duplicates_are_bounded(tmp_path):
    files = _external_files(tmp_path)
    total = sum(len(v) for v in files.values())
    assert_refused(_zip(files), "more than the limit", ArchiveLimits(max_bytes=total - 1))
    assert_refused(
        _zip({**files, **{f"pad/{i}": b"" for i in range(9)}}),
        "11 members, more than the limit of 10",
        ArchiveLimits(max_members=10),
    )
    # A bomb: 64 MiB of zeros deflate to ~64 kB; refused once the count passes the limit.
    assert_refused(
        _zip({**files, "zeros.bin": bytes(64 << 20)}), "more than the limit", ArchiveLimits(max_bytes=1 << 20)
    )
    dup = io.BytesIO()
    with tarfile.open(fileobj=dup, mode="w") as tf:
        for name in ("model.onnx", "model.onnx"):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            tf.addfile(info, io.BytesIO(files[name]))
    assert_refused(dup.getvalue(), "given twice")


def test_a_member_holding_more_than_its_header_declares_is_refused(tmp_path):
    files = _external_files(tmp_path)
    data = bytearray(_zip({**files, "big.bin": b"a" * 4096}))
    # Shrink big.bin's declared size (local header and central directory) to 16 bytes.
    zf = zipfile.ZipFile(io.BytesIO(bytes(data)))
    info = zf.getinfo("big.bin")
    central = data.find(b"big.bin", zf.start_dir) - 46  # its central-directory record (46-byte header)
    data[info.header_offset + 22 : info.header_offset + 26] = (16).to_bytes(4, "little")
    data[central + 24 : central + 28] = (16).to_bytes(4, "little")
    assert_refused(bytes(data), "(more data than its header declares|cannot be unpacked)")


def test_external_data_locations_are_checked_before_reading(tmp_path):
    files = _external_files(tmp_path)
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(64 * 32 * 4))
    for loc in ("../secret.bin", str(secret), "missing.bin"):
        m = onnx.load_from_string(files["model.onnx"])
        for e in m.graph.initializer[0].external_data:
            if e.key == "location":
                e.value = loc
        assert_refused(
            _zip({"model.onnx": m.SerializeToString(), "weights.bin": files["weights.bin"]}),
            r"external data location .*(\.\.|absolute|not a file of the archive)",
        )
    m = onnx.load_from_string(files["model.onnx"])
    for e in m.graph.initializer[0].external_data:
        if e.key == "offset":
            e.value = str(1 << 20)
    if not any(e.key == "offset" for e in m.graph.initializer[0].external_data):
        m.graph.initializer[0].external_data.add(key="offset", value=str(1 << 20))
    assert_refused(_zip({"model.onnx": m.SerializeToString(), "weights.bin": files["weights.bin"]}), "outside the")


def test_archives_without_exactly_one_model_and_garbage_are_refused(tmp_path):
    files = _external_files(tmp_path)
    assert_refused(_zip({"weights.bin": files["weights.bin"]}), "exactly one .onnx file, it holds 0")
    assert_refused(_zip({**files, "b/other.onnx": files["model.onnx"]}), "exactly one .onnx file, it holds 2")
    assert_refused(b"PK\x03\x04" + b"\x00" * 100, "not a readable")
    assert_refused(_zip({"model.onnx": b"not a protobuf at all \xff\xff"}), "not a valid ONNX")
