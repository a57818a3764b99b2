"""Shared blobs are collected when no chip uses them (issue #15 finding 10, DESIGN §4), crash-safely.

The crash test forks a writer that deletes a chip and SIGKILLs itself at the n-th call of one
filesystem operation, for every n up to the end of the delete (and its collection); the folder
is then reopened and every chip must be either complete or absent, with no blob missing for a
chip and none left over without one.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import threading
from pathlib import Path

import pytest

from chipsim import ChipStore, store_io
from tests.store_chips import fresh_chip, make_chip


def referenced(root: Path) -> dict[str, set[str]]:
    """Blob digests each chip's manifest names (read here with plain json, not the store's code)."""
    out = {}
    for folder in sorted((root / "chips").iterdir()):
        m = json.loads((folder / "manifest.json").read_text())
        out[folder.name] = {e["blob"] for e in m["arrays"].values() if "blob" in e} | set(m["attachments"].values())
    return out


def blob_sizes(root: Path) -> dict[str, int]:
    return {p.name.split(".")[0]: p.stat().st_size for p in (root / "blobs").iterdir()}


@pytest.fixture
def store(tmp_path):
    s = ChipStore(tmp_path / "state")
    yield s
    s.close()


def test_blobs_are_collected_when_the_last_chip_using_them_goes(store):
    store.save(make_chip("a"))
    store.save(make_chip("b"))  # the same model as "a": its blobs are shared
    store.save(fresh_chip("c", 1))
    refs = referenced(store.root)
    assert refs["a"] == refs["b"] and not refs["a"] & refs["c"] and len(refs["c"]) == 4
    sizes = blob_sizes(store.root)
    assert set(sizes) == refs["a"] | refs["c"]

    chip_bytes = store.disk_bytes("a")
    report = store.delete("a")
    assert (report.chip_bytes, report.blobs_removed, report.blob_bytes) == (chip_bytes, 0, 0)
    assert set(blob_sizes(store.root)) == refs["b"] | refs["c"]

    report = store.delete("c")
    assert report.blobs_removed == 4 and report.blob_bytes == sum(sizes[d] for d in refs["c"])
    assert set(blob_sizes(store.root)) == refs["b"]
    assert store.load("b").chip_id == "b"

    report = store.delete("b")
    assert report.blob_bytes == sum(sizes[d] for d in refs["b"])
    assert list(store.blobs_dir.iterdir()) == []


def test_orphans_are_collected_at_open_and_strangers_left_alone(tmp_path):
    root = tmp_path / "state"
    with ChipStore(root) as store:
        store.save(make_chip("a"))
        orphan = store.put_blob(b"left by a writer that died before publishing its chip")
        (store.blobs_dir / "README").write_text("not a blob: not ours to remove")
    with ChipStore(root) as store:
        assert store.open_report.blobs_removed == 1
        assert store.open_report.blob_bytes == len(b"left by a writer that died before publishing its chip")
        assert not (store.blobs_dir / f"{orphan}.bin").exists() and (store.blobs_dir / "README").exists()
        assert store.list(verify=True)[0].status == "ready"
        again = store.collect()
        assert (again.blobs_removed, again.blob_bytes) == (0, 0)


def test_a_save_in_progress_keeps_its_blobs_through_a_delete_and_a_collection(store, monkeypatch):
    """A save that found the model's blobs already present, paused before publishing, while the
    only chip using those blobs is deleted and the store collected twice."""
    store.save(make_chip("old"))
    reached, go_on = threading.Event(), threading.Event()
    real = store_io.write_file

    def pausing(path, data):
        if Path(path).name == "manifest.json":
            reached.set()
            assert go_on.wait(60)
        real(path, data)

    monkeypatch.setattr(store_io, "write_file", pausing)
    errors = []
    saver = threading.Thread(target=lambda: _catch(errors, store.save, make_chip("new", seed=4)))
    saver.start()
    assert reached.wait(60)
    report = store.delete("old")
    assert report.blobs_removed == 0
    assert store.collect().blobs_removed == 0
    go_on.set()
    saver.join(60)
    assert errors == []
    monkeypatch.undo()
    assert [(c.chip_id, c.status) for c in store.list(verify=True)] == [("new", "ready")]


def _catch(errors: list, fn, *args):
    try:
        fn(*args)
    except Exception as err:  # reported to the test thread
        errors.append(err)


# ---------------------------------------------------------------- SIGKILL at every step of a delete
def _delete_and_die(root: str, op: str, n: int, chip_id: str) -> None:
    """In a forked child: delete ``chip_id``, SIGKILLed just before the n-th call of ``os.<op>``."""
    store = ChipStore(root)
    real = getattr(os, op)
    calls = [0]

    def killer(*a, **k):
        calls[0] += 1
        if calls[0] == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*a, **k)

    setattr(os, op, killer)
    store.delete(chip_id)
    os._exit(0)  # survived: n was past the last call


@pytest.mark.slow  # forks ~300 writers, each killed at one step of a delete
def test_sigkill_at_every_step_of_a_delete_loses_nothing(tmp_path):
    pristine = tmp_path / "pristine"
    with ChipStore(pristine) as store:
        store.save(make_chip("a"))
        store.save(make_chip("b"))
        store.save(fresh_chip("c", 1))
        store.save(fresh_chip("d", 2))
    refs = referenced(pristine)
    ctx = multiprocessing.get_context("fork")
    killed = {}
    for op in ("rename", "fsync", "unlink", "rmdir"):
        for n in range(1, 40):
            exits = set()
            for target in ("c", "a"):  # a chip with blobs of its own, and one sharing them
                run = tmp_path / f"{op}-{n}-{target}"
                shutil.copytree(pristine, run)
                proc = ctx.Process(target=_delete_and_die, args=(str(run), op, n, target))
                proc.start()
                proc.join(60)
                assert proc.exitcode in (0, -signal.SIGKILL), (op, n, proc.exitcode)
                exits.add(proc.exitcode)
                if proc.exitcode == -signal.SIGKILL:
                    killed[op] = n
                with ChipStore(run) as store:  # the restart
                    present = {c.chip_id: c.status for c in store.list(verify=True)}
                    assert set(present) in ({"a", "b", "c", "d"}, {"a", "b", "c", "d"} - {target}), (op, n)
                    assert set(present.values()) == {"ready"}, (op, n, present)
                    # No blob left that no chip uses, none missing (verify above) for a chip that does.
                    assert set(blob_sizes(run)) == set().union(*(refs[c] for c in present)), (op, n)
                    assert list(store.tmp_dir.iterdir()) == []
                shutil.rmtree(run)
            if exits == {0}:  # both deletes ran to the end: no later call to kill at
                break
    # Every operation was hit: the kill landed in the commit, the cleanup and the collection.
    assert killed.get("rename", 0) >= 1 and killed.get("fsync", 0) >= 2
    assert killed.get("unlink", 0) >= 11 + 4  # 11 files of chip "c", then its 4 blobs
    assert killed.get("rmdir", 0) >= 1
