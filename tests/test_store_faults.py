"""The store under faults (issue #15 findings 2, 5, 6, 9): racing deletes, failing storage, odd
manifests and look-alike ids. Each fault surfaces as a domain error and leaves every chip in its
old or new state.

Storage failures are injected by replacing one filesystem call; where the test runs as root and
may mount, the same cases also run on a real tiny tmpfs (full, then remounted read-only).
"""

from __future__ import annotations

import builtins
import dataclasses
import errno
import io
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

import chipsim.store as store_mod
from chipsim import (
    ChipCorruptError,
    ChipNotFoundError,
    ChipStore,
    LayerSpec,
    check_chip_id,
    get_profile,
    program,
    store_format,
    store_io,
)
from chipsim.store import StoreWriteError
from tests.store_chips import clipped_normal, fresh_chip, make_chip


@pytest.fixture
def store(tmp_path):
    s = ChipStore(tmp_path / "state")
    yield s
    s.close()


def blob_names(store) -> set[str]:
    return {p.name for p in store.blobs_dir.iterdir()}


# ---------------------------------------------------------------- ids (finding 5)
@pytest.mark.parametrize("bad", ["default\n", "a\n", "default\r", "a\nb"])
def test_newline_ids_are_refused_by_the_checker(bad):
    with pytest.raises(ValueError, match="chip_id"):
        check_chip_id(bad)


def test_store_validates_ids_itself(store, monkeypatch):
    """Even with a lax id checker (it lives in another module that may change), no id that is not
    a full-match slug reaches the filesystem through any public method."""
    store.save(make_chip("default"))
    monkeypatch.setattr(store_mod, "check_chip_id", lambda chip_id: chip_id)
    for bad in ("default\n", "../default", "default/..", ".", ""):
        for call in (store.load, store.exists, store.delete, store.read_manifest, store.disk_bytes):
            with pytest.raises(ValueError, match="chip_id"):
                call(bad)
        with pytest.raises(ValueError, match="chip_id"):
            store.save(dataclasses.replace(make_chip("x"), chip_id=bad))
    assert sorted(p.name for p in store.chips_dir.iterdir()) == ["default"]
    assert store.load("default").chip_id == "default"


def test_a_lookalike_folder_on_disk_is_listed_as_corrupt(store):
    store.save(make_chip("default"))
    shutil.copytree(store.chips_dir / "default", store.chips_dir / "default\n")
    listing = {c.chip_id: c.status for c in store.list()}
    assert listing == {"default": "ready", "default\n": "corrupt"}


# ---------------------------------------------------------------- delete races and failures (finding 2)
def test_parallel_deletes_of_one_chip(store):
    """8 threads delete one chip at once, 10 rounds: exactly one wins, the others get
    ChipNotFoundError (never a FileNotFoundError from the losing renames)."""
    for rnd in range(10):
        store.save(make_chip(f"c{rnd}"))
        start = threading.Barrier(8)
        results: list[str] = []

        def worker():
            start.wait()
            try:
                store.delete(f"c{rnd}")
                results.append("deleted")
            except ChipNotFoundError:
                results.append("not found")
            except Exception as err:  # anything else is the bug under test
                results.append(type(err).__name__)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(results) == ["deleted"] + ["not found"] * 7, results
        assert not store.exists(f"c{rnd}")
    assert list(store.tmp_dir.iterdir()) == []


def _fail_rename(monkeypatch, err: int):
    def rename(src, dst, *a, **k):
        raise OSError(err, os.strerror(err), str(src))

    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EIO, errno.EACCES])
def test_failing_delete_keeps_the_chip(store, monkeypatch, code):
    chip = make_chip("keep")
    store.save(chip)
    before = blob_names(store)
    with monkeypatch.context() as m:
        _fail_rename(m, code)
        with pytest.raises(StoreWriteError) as info:
            store.delete("keep")
    assert info.value.errno == code and "keep" in str(info.value)
    assert store.load("keep").layers[0].dg_us.tobytes() == chip.layers[0].dg_us.tobytes()
    assert [(c.chip_id, c.status) for c in store.list(verify=True)] == [("keep", "ready")]
    assert blob_names(store) == before and list(store.tmp_dir.iterdir()) == []
    store.delete("keep")  # and it can be deleted once storage works again
    assert not store.exists("keep")


def test_delete_whose_directory_sync_fails_is_undone(store, monkeypatch):
    """The rename out of ``chips/`` is the commit; if making it durable fails, it is renamed back."""
    store.save(make_chip("keep"))
    real = store_io.fsync_dir

    def fsync_dir(path):
        if Path(path) == store.chips_dir:
            raise OSError(errno.EIO, "I/O error")
        real(path)

    monkeypatch.setattr(store_io, "fsync_dir", fsync_dir)
    with pytest.raises(StoreWriteError) as info:
        store.delete("keep")
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert store.load("keep").chip_id == "keep"
    assert list(store.tmp_dir.iterdir()) == []


def test_delete_whose_cleanup_fails_still_deletes(store, monkeypatch):
    """After the commit (the rename) the chip is gone; a failing removal of its files only leaves
    garbage in ``tmp/``, which the next writer to open the folder removes."""
    store.save(make_chip("gone"))
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)
    store.delete("gone")
    monkeypatch.undo()
    assert not store.exists("gone")
    assert len(list(store.tmp_dir.iterdir())) == 1
    store.close()
    again = ChipStore(store.root)
    assert list(again.tmp_dir.iterdir()) == [] and again.list() == []
    again.close()


# ---------------------------------------------------------------- disk full / read-only during save (finding 9)
def _count_writes(store, monkeypatch) -> int:
    n = [0]
    real = store_io.write_file

    def counting(path, data):
        n[0] += 1
        real(path, data)

    with monkeypatch.context() as m:
        m.setattr(store_io, "write_file", counting)
        store.save(fresh_chip("probe", 999))
    store.delete("probe")
    return n[0]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS])
def test_failing_save_raises_a_typed_error_and_leaves_nothing(store, monkeypatch, code):
    """The k-th file write fails (half the bytes written, as a full disk does), for every k."""
    store.save(make_chip("other"))
    n_writes = _count_writes(store, monkeypatch)
    before = blob_names(store)
    assert n_writes == 15  # 2 layers × 5 own arrays, 2 weights, 1 bias, 1 model file, the manifest
    real = store_io.write_file
    for k in range(n_writes):
        calls = [0]

        def failing(path, data):
            calls[0] += 1
            if calls[0] == k + 1:
                with open(path, "wb") as f:
                    f.write(data[: len(data) // 2])
                raise OSError(code, os.strerror(code), str(path))
            real(path, data)

        monkeypatch.setattr(store_io, "write_file", failing)
        with pytest.raises(StoreWriteError) as info:
            store.save(fresh_chip("new", k))
        assert info.value.errno == code, k
        assert errno.errorcode[code] in str(info.value)
        assert not store.exists("new"), k
        assert list(store.tmp_dir.iterdir()) == [], k  # no partial temp files
        assert blob_names(store) == before, k  # no blob left without a chip
    monkeypatch.setattr(store_io, "write_file", real)
    assert store.load("other").chip_id == "other"
    store.save(fresh_chip("new", 0))


def test_failing_tmp_mkdir_is_typed(store, monkeypatch):
    def mkdir(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(StoreWriteError) as info:
        store.save(make_chip("x"))
    assert info.value.errno == errno.EROFS


# ---------------------------------------------------------------- a real small filesystem (root only)
def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def tiny_fs(tmp_path):
    """A 2 MiB tmpfs, unmounted afterwards; skipped where the test may not mount."""
    if not _can_mount():
        pytest.skip("needs root and mount(8): the injected-failure tests above cover the non-root case")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode()[:200]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _big_chip(chip_id: str, n: int, seed: int = 0):
    return program([LayerSpec("fc", clipped_normal((n, n), seed))], get_profile("pcm"), seed=seed, chip_id=chip_id)


def test_real_disk_full_and_read_only_filesystem(tiny_fs):
    store = ChipStore(tiny_fs / "state")
    store.save(_big_chip("small", 100))  # 100×100: ~200 kB
    used = shutil.disk_usage(tiny_fs).used
    # 600×600 needs 2 × 1.44 MB of device arrays: more than the 2 MiB filesystem has.
    with pytest.raises(StoreWriteError) as info:
        store.save(_big_chip("big", 600, seed=1))
    assert info.value.errno == errno.ENOSPC and "ENOSPC" in str(info.value)
    assert list(store.tmp_dir.iterdir()) == [] and not store.exists("big")
    assert shutil.disk_usage(tiny_fs).used <= used  # nothing of the failed save stays
    store.save(_big_chip("small-2", 100, seed=2))  # space was not leaked
    # Read-only (as a failing disk is remounted): delete and save fail typed, chips intact.
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_fs)], check=True)
    with pytest.raises(StoreWriteError) as info:
        store.delete("small")
    assert info.value.errno == errno.EROFS
    with pytest.raises(StoreWriteError) as info:
        store.save(_big_chip("small-3", 10, seed=3))
    assert info.value.errno == errno.EROFS
    assert [(c.chip_id, c.status) for c in store.list(verify=True)] == [("small", "ready"), ("small-2", "ready")]
    # A second writer on a read-only filesystem fails typed; a read-only replica serves.
    store.close()
    with pytest.raises(StoreWriteError):
        ChipStore(tiny_fs / "state")
    replica = ChipStore(tiny_fs / "state", read_only=True)
    assert replica.load("small").chip_id == "small"


# ---------------------------------------------------------------- odd manifests never stop the listing (finding 6)
def _dir(mpath: Path, monkeypatch):
    mpath.unlink()
    mpath.mkdir()


def _unreadable(mpath: Path, monkeypatch):
    """chmod 000; as root that does not stop reads, so a PermissionError is injected as well."""
    mpath.chmod(0)
    if os.geteuid() != 0:
        return
    real_open, real_os_open = builtins.open, os.open

    def deny(target):
        return str(target) == str(mpath)

    def fake_open(file, *a, **k):
        if deny(file):
            raise PermissionError(errno.EACCES, "Permission denied", str(file))
        return real_open(file, *a, **k)

    def fake_os_open(path, *a, **k):
        if deny(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_os_open(path, *a, **k)

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)
    monkeypatch.setattr(os, "open", fake_os_open)


def _deep(mpath: Path, monkeypatch):
    mpath.write_bytes(b"[" * 100_000 + b"]" * 100_000)


def _deep_object(mpath: Path, monkeypatch):
    mpath.write_bytes(b'{"format": "agedchip-chip", "meta": ' + b'{"a":' * 100_000 + b"1" + b"}" * 100_001)


def _bad_utf8(mpath: Path, monkeypatch):
    mpath.write_bytes(b'{"format": "agedchip-\xff\xfe"}')


def _truncated(mpath: Path, monkeypatch):
    data = mpath.read_bytes()
    mpath.write_bytes(data[: len(data) // 2])


def _fifo(mpath: Path, monkeypatch):
    mpath.unlink()
    os.mkfifo(mpath)  # reading it would block forever


def _huge(mpath: Path, monkeypatch):
    with open(mpath, "r+b") as f:
        f.truncate(1 << 33)  # sparse 8 GiB: reading it whole would exhaust memory


def _symlink(mpath: Path, monkeypatch):
    target = mpath.parent.parent.parent / "elsewhere.json"
    target.write_bytes(mpath.read_bytes())
    mpath.unlink()
    mpath.symlink_to(target)


ODD = [_dir, _unreadable, _deep, _deep_object, _bad_utf8, _truncated, _fifo, _huge, _symlink]


@pytest.mark.parametrize("spoil", ODD, ids=[f.__name__.strip("_") for f in ODD])
def test_odd_manifest_marks_only_that_chip_corrupt(store, monkeypatch, spoil):
    for cid in ("a-good", "bad", "z-good"):
        store.save(make_chip(cid))
    spoil(store.chips_dir / "bad" / "manifest.json", monkeypatch)
    for verify in (False, True):
        listing = {c.chip_id: c for c in store.list(verify=verify)}
        assert {k: v.status for k, v in listing.items()} == {"a-good": "ready", "bad": "corrupt", "z-good": "ready"}
        assert "manifest.json" in listing["bad"].error
    with pytest.raises(ChipCorruptError) as info:
        store.load("bad")
    assert info.value.path == "chips/bad/manifest.json"
    assert store.load("z-good").chip_id == "z-good"
    store.delete("bad")  # a corrupt chip can still be deleted
    assert [c.chip_id for c in store.list()] == ["a-good", "z-good"]


@pytest.mark.parametrize("kind", ["dir", "fifo"])
def test_odd_array_file_is_corrupt_not_an_oserror(store, kind):
    store.save(make_chip("bad"))
    path = store.chips_dir / "bad" / "l0_nu.npy"
    path.unlink()
    path.mkdir() if kind == "dir" else os.mkfifo(path)
    with pytest.raises(ChipCorruptError) as info:
        store.load("bad")
    assert info.value.path == "chips/bad/l0_nu.npy"
    assert [c.status for c in store.list(verify=True)] == ["corrupt"]


def test_manifest_with_wrong_inner_types_is_corrupt(store):
    store.save(make_chip("bad"))
    mpath = store.chips_dir / "bad" / "manifest.json"
    manifest = json.loads(mpath.read_text())
    manifest["attachments"] = ["not-an-object"]
    manifest["manifest_sha256"] = store_format.manifest_digest(manifest)
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(ChipCorruptError):
        store.load("bad")


def test_chip_deleted_while_a_replica_loads_it_is_not_found(store, monkeypatch):
    """A replica reading a chip the writer deletes meanwhile reports it gone, not corrupt."""
    store.save(make_chip("going"))
    replica = ChipStore(store.root, read_only=True)
    real = store_io.read_regular_file

    def read_then_delete(path, *a, **k):
        data = real(path, *a, **k)
        if Path(path).name == "manifest.json" and store.exists("going"):
            store.delete("going")  # the writer, between the replica's manifest and array reads
        return data

    monkeypatch.setattr(store_io, "read_regular_file", read_then_delete)
    with pytest.raises(ChipNotFoundError):
        replica.load("going")
