"""The chip store (DESIGN §4) detects corruption: truncated, altered, empty or missing arrays and
blobs, manifests of another version, broken, inconsistent or altered, and pickled arrays (refused,
never executed); every error names the chip and the file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from chipsim import ChipCorruptError, ChipVersionError
from chipsim.store_format import FORMAT_VERSION, manifest_digest
from tests.store_chips import chip_file, make_chip


# ---------------------------------------------------------------- corruption
def _corrupt_error(store, chip_id) -> ChipCorruptError:
    with pytest.raises(ChipCorruptError) as info:
        store.load(chip_id)
    return info.value


def test_truncated_array_is_corrupt_and_named(saved):
    store, chip = saved
    path = chip_file(store, chip.chip_id, "l0_dg_us.npy")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _corrupt_error(store, chip.chip_id)
    assert not isinstance(err, ChipVersionError)
    assert err.path == f"chips/{chip.chip_id}/l0_dg_us.npy" and "l0_dg_us.npy" in str(err)
    assert err.chip_id == chip.chip_id


@pytest.mark.parametrize("name", ["l0_nu.npy", "l1_dg_us.npy", "l0_gdc_baseline_col.npy", "l1_gdc_baseline.npy"])
def test_flipped_byte_is_corrupt_and_named(saved, name):
    store, chip = saved
    path = chip_file(store, chip.chip_id, name)
    data = bytearray(path.read_bytes())
    data[len(data) - 3] ^= 0x01  # one bit in the payload: shape and dtype stay valid
    path.write_bytes(bytes(data))
    err = _corrupt_error(store, chip.chip_id)
    assert name in err.path and "checksum" in err.reason


def test_empty_and_missing_array_files(saved):
    store, chip = saved
    chip_file(store, chip.chip_id, "l1_nu.npy").unlink()
    err = _corrupt_error(store, chip.chip_id)
    assert err.path.endswith("l1_nu.npy") and "missing" in err.reason
    chip2 = make_chip("chip-b")
    store.save(chip2)
    chip_file(store, "chip-b", "l0_nu.npy").write_bytes(b"")
    assert _corrupt_error(store, "chip-b").path.endswith("l0_nu.npy")


def test_missing_or_altered_shared_blob(saved):
    store, chip = saved
    manifest = json.loads(chip_file(store, chip.chip_id, "manifest.json").read_text())
    digest = manifest["arrays"]["layers/0/weight"]["blob"]
    blob = store.blobs_dir / f"{digest}.npy"
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x80
    blob.write_bytes(bytes(data))
    err = _corrupt_error(store, chip.chip_id)
    assert err.path == f"blobs/{digest}.npy" and "checksum" in err.reason
    blob.unlink()
    err = _corrupt_error(store, chip.chip_id)
    assert err.path == f"blobs/{digest}.npy" and "missing" in err.reason


def test_manifest_version_mismatch(saved):
    store, chip = saved
    mpath = chip_file(store, chip.chip_id, "manifest.json")
    manifest = json.loads(mpath.read_text())
    manifest["version"] = FORMAT_VERSION + 1
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ChipVersionError) as info:
        store.load(chip.chip_id)
    assert info.value.path == f"chips/{chip.chip_id}/manifest.json"
    assert str(FORMAT_VERSION + 1) in str(info.value)
    [listing] = store.list()
    assert listing.status == "corrupt" and "version" in listing.error


@pytest.mark.parametrize("text", [b"", b"{", b"[]", b'{"format": "other"}', b"\xff\xfe"])
def test_broken_manifest(saved, text):
    store, chip = saved
    chip_file(store, chip.chip_id, "manifest.json").write_bytes(text)
    err = _corrupt_error(store, chip.chip_id)
    assert err.path.endswith("manifest.json")


def test_inconsistent_manifest(saved):
    store, chip = saved
    mpath = chip_file(store, chip.chip_id, "manifest.json")
    manifest = json.loads(mpath.read_text())
    del manifest["arrays"]["layers/1/nu"]
    mpath.write_text(json.dumps(manifest))
    assert "checksum" in _corrupt_error(store, chip.chip_id).reason
    # Re-signed (a consistent but wrong manifest): the structural checks still catch it.
    manifest["manifest_sha256"] = manifest_digest(manifest)
    mpath.write_text(json.dumps(manifest))
    assert _corrupt_error(store, chip.chip_id).path.endswith("manifest.json")
    # A manifest that points outside the chip folder is rejected, not followed.
    manifest["arrays"]["layers/1/nu"] = {"file": "../../x.npy", "sha256": "0" * 64, "shape": [1], "dtype": "float16"}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    mpath.write_text(json.dumps(manifest))
    assert "invalid file name" in _corrupt_error(store, chip.chip_id).reason


def test_manifest_naming_another_chip(saved):
    store, chip = saved
    os.rename(store.chips_dir / chip.chip_id, store.chips_dir / "copied")
    assert "copied" in str(_corrupt_error(store, "copied"))


def test_altered_manifest_value_is_corrupt(saved):
    store, chip = saved
    mpath = chip_file(store, chip.chip_id, "manifest.json")
    text = mpath.read_text()
    assert '"seed": 9' in text
    mpath.write_text(text.replace('"seed": 9', '"seed": 8'))
    _corrupt_error(store, chip.chip_id)


class _Evil:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ.get("AGEDCHIP_TEST_MARKER", "/nonexistent/marker")),))


def test_pickled_array_is_refused_not_executed(saved, tmp_path, monkeypatch):
    store, chip = saved
    marker = tmp_path / "pwned"
    monkeypatch.setenv("AGEDCHIP_TEST_MARKER", str(marker))
    path = chip_file(store, chip.chip_id, "l0_nu.npy")
    arr = np.empty(1, dtype=object)
    arr[0] = _Evil()
    import io

    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    data = buf.getvalue()
    path.write_bytes(data)
    mpath = chip_file(store, chip.chip_id, "manifest.json")
    manifest = json.loads(mpath.read_text())
    manifest["arrays"]["layers/0/nu"].update(sha256=hashlib.sha256(data).hexdigest(), shape=[1], dtype="object")
    manifest["manifest_sha256"] = manifest_digest(manifest)  # a fully consistent, signed attack
    mpath.write_text(json.dumps(manifest))
    err = _corrupt_error(store, chip.chip_id)
    assert err.path.endswith("l0_nu.npy")
    assert not marker.exists()
