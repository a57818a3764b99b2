"""The chip store (DESIGN §4): round trip, size budget, chip ids, listing and deletion, atomic
publish (corruption detection is in test_store_corruption).

The crash test runs a separate Python process that saves chips in a loop and SIGKILLs it at
random moments, many times; afterwards every chip on disk must be complete and valid.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chipsim import ChipExistsError, ChipNotFoundError, ChipStore, LayerSpec, get_profile, program, read
from chipsim.store_format import FORMAT_VERSION
from tests.store_chips import chip_file, clipped_normal, make_chip

REPO = Path(__file__).resolve().parents[1]


DAY = 86400.0


# ---------------------------------------------------------------- round trip
LAYER_ARRAYS = ("weight", "dg_us", "nu", "gdc_baseline", "gdc_baseline_col", "gdc_baseline_exact")


def test_round_trip_is_bit_identical(saved):
    store, chip = saved
    back = store.load(chip.chip_id)
    assert back.chip_id == chip.chip_id and back.seed == chip.seed
    assert back.programmed_at == chip.programmed_at
    assert back.profile == chip.profile
    assert back.meta == chip.meta and back.attachments == chip.attachments
    assert len(back.layers) == len(chip.layers)
    for a, b in zip(chip.layers, back.layers):
        assert (a.name, a.input_range, list(a.tiles), a.meta) == (b.name, b.input_range, list(b.tiles), b.meta)
        for name in LAYER_ARRAYS:
            x, y = getattr(a, name), getattr(b, name)
            assert x.dtype == y.dtype and x.shape == y.shape, name
            assert x.tobytes() == y.tobytes(), name
        assert (a.bias is None) == (b.bias is None)
        if a.bias is not None:
            assert a.bias.tobytes() == b.bias.tobytes() and a.bias.dtype == b.bias.dtype
    # The loaded chip reads out exactly as the one in memory.
    for la, lb in zip(read(chip, DAY, 3).layers, read(back, DAY, 3).layers):
        for name in ("w_norm", "alpha_global", "alpha_column", "alpha_exact"):
            assert getattr(la, name).tobytes() == getattr(lb, name).tobytes()
    # A fresh store on the same folder (a restart) finds it.
    again = ChipStore(store.root)
    assert [c.chip_id for c in again.list(verify=True)] == [chip.chip_id]


def test_files_are_plain_arrays_without_pickle(saved):
    store, chip = saved
    for path in (store.chips_dir / chip.chip_id).glob("*.npy"):
        arr = np.load(path, allow_pickle=False)
        assert arr.dtype != object
    manifest = json.loads(chip_file(store, chip.chip_id, "manifest.json").read_text())
    assert manifest["version"] == FORMAT_VERSION
    for entry in manifest["arrays"].values():
        assert ("sha256" in entry) or ("blob" in entry)


@pytest.mark.parametrize("profile", ["pcm", "reram"])
def test_bytes_per_weight(store, profile):
    """Budget: ≤ 8 bytes per weight for the two devices of a pair (DESIGN §4).

    Exact accounting for one 512×512 layer on one tile. The chip's own files are
    - l0_dg_us.npy, l0_nu.npy: float16 (2, 512, 512) each → 2 devices × 2 bytes × 2 arrays
      = 8 bytes per weight, plus a 128-byte .npy header each;
    - l0_gdc_baseline.npy, l0_gdc_baseline_exact.npy: one float32 per tile (+128 header);
      l0_gdc_baseline_col.npy: 512 float32 (+128);
    - manifest.json (a few kB).
    The target weights (float32, 4 bytes per weight) are a shared, content-addressed blob used by
    every chip programmed from the same model, reported separately."""
    n = 512
    chip = program([LayerSpec("fc", clipped_normal((n, n), 3))], get_profile(profile), seed=1, chip_id="b")
    store.save(chip)
    folder = store.chips_dir / "b"
    sizes = {p.name: p.stat().st_size for p in folder.iterdir()}
    assert set(sizes) == {
        "manifest.json",
        "l0_dg_us.npy",
        "l0_nu.npy",
        "l0_gdc_baseline.npy",
        "l0_gdc_baseline_col.npy",
        "l0_gdc_baseline_exact.npy",
    }
    assert sizes["l0_dg_us.npy"] == sizes["l0_nu.npy"] == 128 + 2 * n * n * 2
    assert sizes["l0_gdc_baseline.npy"] == sizes["l0_gdc_baseline_exact.npy"] == 128 + 4
    assert sizes["l0_gdc_baseline_col.npy"] == 128 + 4 * n
    assert sizes["manifest.json"] < 8192
    total = store.disk_bytes("b")
    assert total == sum(sizes.values())
    device_bytes = (sizes["l0_dg_us.npy"] - 128) + (sizes["l0_nu.npy"] - 128)
    assert device_bytes / chip.n_weights == 8.0
    # Everything of the chip: 8 + (5·128 + 4·514 + manifest)/262144 < 8.05 bytes per weight.
    assert total / chip.n_weights < 8.05
    blobs = {p.name: p.stat().st_size for p in store.blobs_dir.iterdir()}
    assert sorted(blobs.values()) == [128 + 4 * n * n]  # the shared target weights, once


# ---------------------------------------------------------------- ids, existence, listing, delete
@pytest.mark.parametrize(
    "bad",
    [
        "../x",
        "..",
        ".",
        "",
        "A",
        "Chip",
        "a/b",
        "a\\b",
        "-x",
        "_x",
        "x" * 64,
        "a b",
        "ü",
        "/abs",
        "a\x00b",
        "default\n",
        "a\nb",
        None,
        5,
    ],
)
def test_invalid_chip_ids_are_rejected(store, bad):
    with pytest.raises(ValueError, match="chip_id"):
        store.load(bad)
    with pytest.raises(ValueError, match="chip_id"):
        store.exists(bad)
    with pytest.raises(ValueError, match="chip_id"):
        store.delete(bad)
    chip = dataclasses.replace(make_chip("ok"), chip_id=bad)
    with pytest.raises(ValueError, match="chip_id"):
        store.save(chip)
    assert not any(store.chips_dir.iterdir())
    assert not (store.root.parent / "x").exists()


@pytest.mark.parametrize("good", ["a", "0", "chip-1_b", "x" * 63])
def test_valid_chip_ids(store, good):
    store.save(make_chip(good))
    assert store.exists(good) and store.load(good).chip_id == good


def test_resave_is_refused_and_the_original_kept(saved):
    store, chip = saved
    before = chip_file(store, chip.chip_id, "l0_dg_us.npy").read_bytes()
    other = make_chip(chip.chip_id, seed=10)
    with pytest.raises(ChipExistsError, match=chip.chip_id):
        store.save(other)
    assert chip_file(store, chip.chip_id, "l0_dg_us.npy").read_bytes() == before
    assert store.load(chip.chip_id).seed == 9
    assert not any(store.tmp_dir.iterdir())  # the aborted write left nothing behind


def test_not_found(store):
    with pytest.raises(ChipNotFoundError, match="nope"):
        store.load("nope")
    with pytest.raises(KeyError):  # also a KeyError for dict-like callers
        store.load("nope")
    assert not store.exists("nope")


def test_list_marks_corrupt_chips(store):
    for cid in ("good", "bad-array", "bad-manifest"):
        store.save(make_chip(cid))
    p = chip_file(store, "bad-array", "l0_nu.npy")
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))
    chip_file(store, "bad-manifest", "manifest.json").write_text("{not json")
    (store.chips_dir / "UPPER").mkdir()  # a folder that cannot be a chip id
    (store.chips_dir / "stray-file").write_text("x")  # not a folder: ignored
    fast = {c.chip_id: c.status for c in store.list()}
    assert fast == {"UPPER": "corrupt", "bad-array": "ready", "bad-manifest": "corrupt", "good": "ready"}
    full = {c.chip_id: c for c in store.list(verify=True)}
    assert {k: v.status for k, v in full.items()} == {
        "UPPER": "corrupt",
        "bad-array": "corrupt",
        "bad-manifest": "corrupt",
        "good": "ready",
    }
    assert "l0_nu.npy" in full["bad-array"].error
    assert full["good"].error is None and full["good"].manifest["chip_id"] == "good"


def test_delete(store):
    store.save(make_chip("one"))
    store.save(make_chip("two"))
    store.delete("one")
    assert not store.exists("one")
    with pytest.raises(ChipNotFoundError):
        store.load("one")
    with pytest.raises(ChipNotFoundError):
        store.delete("one")
    assert store.load("two").chip_id == "two"  # shared blobs survive for the other chip
    assert [c.chip_id for c in store.list(verify=True)] == ["two"]
    assert not any(store.tmp_dir.iterdir())
    store.save(make_chip("one", seed=3))  # the id is free again
    assert store.load("one").seed == 3


def test_stale_temporary_folders_are_cleaned(store):
    dead = store.tmp_dir / "4194305-deadbeef"  # above Linux's maximal pid: never alive
    dead.mkdir()
    (dead / "manifest.json").write_text("{}")
    (store.tmp_dir / "garbage").write_text("x")
    store.close()  # the next writer to take the lock cleans up
    ChipStore(store.root)
    assert not any(store.tmp_dir.iterdir())
    assert store.list() == []


# ---------------------------------------------------------------- crash safety (SIGKILL)
CHILD = r"""
import sys
import numpy as np
from chipsim import ChipStore, LayerSpec, get_profile, program
root, run = sys.argv[1], int(sys.argv[2])
store = ChipStore(root)
base = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)
profile = get_profile("pcm")
i = 0
while True:
    k = run * 1000 + i
    # New weights each time, so every save also writes a new shared blob.
    w = base + np.float32(k * 1e-4)
    store.save(program([LayerSpec("fc", w)], profile, seed=k, chip_id=f"r{run}-{i}"))
    if i == 0:  # one chip per run is safe, so a loaded machine cannot make the test vacuous
        print("ready", flush=True)
    i += 1
"""


def _expected_chip(chip_id: str):
    run, i = (int(v) for v in chip_id[1:].split("-"))
    k = run * 1000 + i
    base = np.random.default_rng(0).standard_normal((300, 300)).astype(np.float32)
    return program([LayerSpec("fc", base + np.float32(k * 1e-4))], get_profile("pcm"), seed=k, chip_id=chip_id)


@pytest.mark.slow  # SIGKILLs writer subprocesses at random moments
def test_sigkill_during_save_never_leaves_a_partial_chip(tmp_path):
    root = tmp_path / "state"
    ChipStore(root).close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    delays = random.Random(20240601)  # fixed seed for the kill delays
    kills, mid_chip, mid_blob = 0, 0, 0
    for run in range(25):
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(root), str(run)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = proc.stdout.readline()
        assert line.strip() == "ready", proc.stderr.read()
        time.sleep(delays.uniform(0.0, 0.25))
        assert proc.poll() is None, proc.stderr.read()  # still saving when killed
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        # What the killed writer left in tmp/ tells where the kill landed (the next store cleans it).
        left = list((root / "tmp").iterdir())
        mid_chip += any(p.is_dir() for p in left)
        mid_blob += any(p.is_file() for p in left)
    # Measured on the 2-core dev machine: of 25 kills, 14 (idle) and 19 (loaded) landed inside a
    # chip write (its tmp folder was left behind), 1–2 inside a shared-blob write, the rest while
    # programming; with "ready" after each run's first chip, 9 and 16 (load average ~10), 1–4
    # inside a blob write. Require a few mid-save kills so the test cannot pass vacuously.
    print(f"kills={kills} mid_chip_save={mid_chip} mid_blob_save={mid_blob}")
    assert kills >= 20
    assert mid_chip >= 3, (mid_chip, mid_blob)

    # A restart: every chip folder is complete, verified and equal to what was programmed.
    store = ChipStore(root)
    assert not any(store.tmp_dir.iterdir())  # dead writers' leftovers are removed
    folders = sorted(p.name for p in store.chips_dir.iterdir())
    assert len(folders) >= 25  # at least the first chip of every run
    listing = store.list(verify=True)
    assert [c.chip_id for c in listing] == folders
    assert all(c.status == "ready" for c in listing), [c for c in listing if c.status != "ready"]
    for chip_id in folders:
        got = store.load(chip_id).layers[0]
        want = _expected_chip(chip_id).layers[0]
        for name in LAYER_ARRAYS:
            assert getattr(got, name).tobytes() == getattr(want, name).tobytes(), (chip_id, name)
    # Every blob is complete (its name is its content's sha256) and used by a chip: blobs of the
    # chip being written at the kill were collected when the folder was reopened.
    used = set()
    for chip_id in folders:
        m = json.loads(chip_file(store, chip_id, "manifest.json").read_text())
        used |= {e["blob"] for e in m["arrays"].values() if "blob" in e} | set(m["attachments"].values())
    for blob in store.blobs_dir.iterdir():
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name.split(".")[0]
        assert blob.name.split(".")[0] in used, blob.name
    # Each run's chips are contiguous from 0: only the chip being written at the kill is absent.
    by_run: dict[int, list[int]] = {}
    for chip_id in folders:
        run, i = (int(v) for v in chip_id[1:].split("-"))
        by_run.setdefault(run, []).append(i)
    for run, idx in by_run.items():
        assert sorted(idx) == list(range(len(idx))), run
