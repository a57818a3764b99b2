"""One writer per store (issue #15 finding 1, DESIGN §4): an exclusive OS lock on the state folder.

Every test here uses real second processes (a subprocess, or a forked child), because the
finding is about two processes on one folder: a second writer must refuse to open, a dead
writer's lock must be recovered, and read-only replicas must serve without blocking the writer.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from chipsim import ChipNotFoundError, ChipStore
from chipsim.store import ChipStoreError, StoreLockedError, StoreReadOnlyError
from tests.store_chips import make_chip

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}

# Opens the folder for writing and reports what happened; exit 0 opened, 3 refused.
TRY_OPEN = r"""
import sys
from chipsim import ChipStore
try:
    ChipStore(sys.argv[1])
except Exception as err:
    print(type(err).__name__, err, flush=True)
    sys.exit(3)
print("opened", flush=True)
"""

# Holds the folder for writing (and publishes one chip, and leaves a half-written entry in tmp/
# the way a save in progress does) until told to stop on stdin.
HOLD = r"""
import os, sys
from chipsim import ChipStore, LayerSpec, get_profile, program
import numpy as np
store = ChipStore(sys.argv[1])
w = np.linspace(-1, 1, 80, dtype=np.float32).reshape(8, 10)
store.save(program([LayerSpec("fc", w)], get_profile("pcm"), seed=1, chip_id="from-child"))
os.mkdir(os.path.join(sys.argv[1], "tmp", f"{os.getpid()}-halfwritten"))
print("ready", os.getpid(), flush=True)
sys.stdin.readline()
"""


def try_open(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", TRY_OPEN, str(root)], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120
    )


class Holder:
    """A writer in another process."""

    def __init__(self, root: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(root)],
            cwd=REPO,
            env=ENV,
            text=True,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        line = self.proc.stdout.readline().split()
        assert line[:1] == ["ready"], self.proc.stderr.read()
        self.pid = int(line[1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            f.close()


@pytest.fixture
def holder(tmp_path):
    h = Holder(tmp_path / "state")
    yield h
    h.kill()


@pytest.mark.slow  # starts writer subprocesses
def test_second_writer_process_is_refused_naming_folder_and_holder(tmp_path):
    root = tmp_path / "state"
    store = ChipStore(root)
    store.save(make_chip("mine"))
    res = try_open(root)
    assert res.returncode == 3, res.stdout + res.stderr
    assert res.stdout.startswith("StoreLockedError")
    assert str(root) in res.stdout and f"pid {os.getpid()}" in res.stdout
    # The holder is unaffected and still writes; once it closes, a new writer may open.
    store.save(make_chip("mine-2"))
    store.close()
    res = try_open(root)
    assert (res.returncode, res.stdout.strip()) == (0, "opened"), res.stdout + res.stderr


def test_writer_in_this_process_is_refused_while_another_holds(holder, tmp_path):
    root = tmp_path / "state"
    with pytest.raises(StoreLockedError) as info:
        ChipStore(root)
    assert info.value.root == root and info.value.pid == holder.pid
    assert str(root) in str(info.value) and f"pid {holder.pid}" in str(info.value)


def test_lock_of_a_sigkilled_writer_is_recovered(holder, tmp_path):
    root = tmp_path / "state"
    assert (root / "tmp" / f"{holder.pid}-halfwritten").is_dir()
    holder.kill()  # SIGKILL: no chance to release anything
    store = ChipStore(root)  # the kernel dropped the dead process's lock
    assert [c.chip_id for c in store.list(verify=True)] == ["from-child"]
    assert list(store.tmp_dir.iterdir()) == []  # the dead writer's half-written entry is gone
    store.save(make_chip("after"))
    assert store.exists("after")


def test_read_only_replica_serves_while_the_writer_holds_the_lock(holder, tmp_path):
    root = tmp_path / "state"
    lock_text = (root / "lock").read_bytes()
    replica = ChipStore(root, read_only=True)
    assert replica.read_only
    assert [(c.chip_id, c.status) for c in replica.list(verify=True)] == [("from-child", "ready")]
    chip = replica.load("from-child")
    assert replica.exists("from-child") and chip.chip_id == "from-child"
    # Every mutation is refused with a domain error, and nothing changed on disk.
    for attempt in (
        lambda: replica.save(make_chip("nope")),
        lambda: replica.delete("from-child"),
        lambda: replica.put_blob(b"x"),
        replica.collect,
    ):
        with pytest.raises(StoreReadOnlyError, match="read-only"):
            attempt()
    assert replica.load("from-child").chip_id == "from-child" and not (root / "chips" / "nope").exists()
    assert (root / "lock").read_bytes() == lock_text
    assert (root / "tmp" / f"{holder.pid}-halfwritten").is_dir()  # a replica never cleans the writer's tmp/
    # A replica does not hold the writer lock: the writer can restart (here: be replaced) under it.
    holder.kill()
    res = try_open(root)
    assert (res.returncode, res.stdout.strip()) == (0, "opened"), res.stdout + res.stderr
    with pytest.raises(ChipNotFoundError):
        replica.load("absent")


def test_read_only_store_creates_nothing(tmp_path):
    with pytest.raises(ChipStoreError, match="does not exist"):
        ChipStore(tmp_path / "missing", read_only=True)
    assert not (tmp_path / "missing").exists()
    (tmp_path / "empty").mkdir()
    assert ChipStore(tmp_path / "empty", read_only=True).list() == []
    assert list((tmp_path / "empty").iterdir()) == []


def test_stores_of_one_process_share_its_lock(tmp_path):
    """Policy: one process is one writer. A second ChipStore on the same folder in the same process
    joins the process's lock (the service's tests restart an app in-process while the old app
    object is still referenced); the OS lock is released when the last of them closes."""
    root = tmp_path / "state"
    first = ChipStore(root)
    second = ChipStore(root)
    second.save(make_chip("via-second"))
    assert first.load("via-second").chip_id == "via-second"
    first.close()
    first.close()  # idempotent: must not release the second store's share
    res = try_open(root)
    assert res.returncode == 3 and res.stdout.startswith("StoreLockedError"), res.stdout + res.stderr
    with pytest.raises(ChipStoreError, match="closed"):
        first.save(make_chip("after-close"))
    second.close()
    res = try_open(root)
    assert (res.returncode, res.stdout.strip()) == (0, "opened"), res.stdout + res.stderr


def _open_in_fork(root: str, conn) -> None:
    try:
        ChipStore(root)
        conn.send("opened")
    except Exception as err:  # reported to the parent
        conn.send(type(err).__name__)


def test_forked_child_is_another_writer(tmp_path):
    """A fork inherits the parent's memory (and its open lock); it must not join the parent's lock."""
    root = tmp_path / "state"
    store = ChipStore(root)
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_open_in_fork, args=(str(root), send))
    proc.start()
    proc.join(60)
    assert recv.recv() == "StoreLockedError"
    store.close()


def test_tmp_entries_carrying_our_own_pid_are_removed_at_open(tmp_path):
    """The service is PID 1 in its image, so after a restart a dead writer's ``tmp/1-*`` entries
    carry the new process's own pid; holding the exclusive lock proves no writer is alive."""
    root = tmp_path / "state"
    ChipStore(root).close()
    tmp = root / "tmp"
    (tmp / f"{os.getpid()}-deadbeef").mkdir()
    (tmp / f"{os.getpid()}-deadbeef" / "l0_nu.npy").write_bytes(b"\x93NUMPY")
    (tmp / f"{os.getpid()}-cafe.npy").write_bytes(b"half a blob")
    (tmp / f"{os.getpid()}-del-0123").mkdir()
    (tmp / "1-feed").mkdir()
    store = ChipStore(root)
    assert list(store.tmp_dir.iterdir()) == []
    store.close()
