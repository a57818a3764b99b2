"""One writer per state folder: an exclusive ``flock`` on ``<root>/lock`` (DESIGN §4, issue #15).

Why ``flock``: the kernel drops the lock when the holder's last descriptor closes, which happens
when the process dies in any way (SIGKILL, OOM kill, power cut of a container), so a stale lock
of a dead process never needs recovering by hand and no pid file needs trusting. The lock file's
content (holder pid, host, time) is only for the message a refused writer prints.

Policy within one process: one process is one writer. A second ``ChipStore`` on the same folder
in the same process joins the process's lock (reference-counted; the OS lock is released when
the last of them closes) instead of failing, because its threads already coordinate through the
shared :class:`Share` (blob pins and the collection mutex). A forked child is another process:
it does not inherit the share (its inherited descriptor is closed after the fork) and must take
the lock itself, which fails while the parent holds it.

Caveats: ``flock`` is advisory (a writer of an older build that takes no lock is not stopped),
and on NFS it is emulated with byte-range locks (works between clients of Linux ≥ 2.6.12).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chipsim.store_errors import StoreLockedError, StoreWriteError

LOCK_NAME = "lock"


@dataclass
class Share:
    """What the stores of one process on one folder share: the locked descriptor, the pins of
    blobs that saves in progress rely on, and the mutex that orders pins against collection."""

    fd: int
    pid: int
    key: tuple[int, int]
    refs: int = 1
    mutex: threading.Lock = field(default_factory=threading.Lock)
    pins: Counter = field(default_factory=Counter)


_shares: dict[tuple[int, int], Share] = {}
_shares_lock = threading.Lock()
# Releases asked for by garbage collection while the lock was taken: a finalizer may run inside
# any allocation, including one made while this thread holds ``_shares_lock``, so it must never
# wait for it. They are applied by the next acquire or release (deque appends are atomic).
_pending: deque[Share] = deque()


def _after_fork_in_child() -> None:
    """The child must not keep the parent's lock alive (flock belongs to the open file, which a
    fork shares) nor join it; a lock held by another thread at the fork is reset."""
    global _shares_lock
    _shares_lock = threading.Lock()
    _pending.clear()
    for share in _shares.values():
        try:
            os.close(share.fd)  # closes the child's copy only; LOCK_UN would unlock the parent too
        except OSError:
            pass
    _shares.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _holder(path: Path) -> dict:
    """Who wrote the lock file last (best effort: it may be unreadable or half written)."""
    try:
        info = json.loads(path.read_text())
        return {"pid": int(info["pid"]), "host": str(info.get("host", "")) or None, "since": info.get("since")}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def acquire(root: Path, on_acquire: Callable[[Share], None]) -> tuple[Share, bool]:
    """Take (or, within this process, join) the writer lock of ``root``.

    Returns the share and whether this call took the OS lock. ``on_acquire`` runs once, when the
    OS lock is taken and before any other store of this process can join: the place for cleanup
    that must not race with this process's own saves. Raises :class:`StoreLockedError` when
    another process holds the lock, :class:`StoreWriteError` when the folder cannot be written.
    """
    path = root / LOCK_NAME
    try:
        # Read-only descriptor: flock does not need write access, and an open-for-write file
        # would keep the filesystem from being remounted read-only when a disk fails.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    except OSError as err:
        raise StoreWriteError(f"opening the lock file of {root}", err) from None
    kept = False
    try:
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)  # the same folder through any path, link or bind mount
        with _shares_lock:
            _drain_pending()
            share = _shares.get(key)
            if share is not None and share.pid == os.getpid():
                share.refs += 1
                return share, False
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreLockedError(root, **_holder(path)) from None
            except OSError as err:  # e.g. ENOLCK on a filesystem without locks
                raise StoreWriteError(f"locking {root}", err) from None
            try:
                with open(path, "w") as f:
                    json.dump(
                        {
                            "pid": os.getpid(),
                            "host": socket.gethostname(),
                            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                        },
                        f,
                    )
            except OSError as err:  # a read-only filesystem shows here
                raise StoreWriteError(f"writing the lock file of {root}", err) from None
            share = Share(fd=fd, pid=os.getpid(), key=key)
            on_acquire(share)
            _shares[key] = share
            kept = True
            return share, True
    finally:
        if not kept:
            os.close(fd)  # a joined share has its own descriptor; a failed take releases the lock


def _drop(share: Share) -> None:
    """One hold less (``_shares_lock`` held); the OS lock goes with the last one of this process."""
    if share.pid != os.getpid():
        return  # a copy inherited through fork: its descriptor was closed after the fork
    share.refs -= 1
    if share.refs == 0:
        if _shares.get(share.key) is share:
            del _shares[share.key]
        os.close(share.fd)


def _drain_pending() -> None:
    while _pending:
        _drop(_pending.popleft())


def release(share: Share) -> None:
    """Drop one store's hold (a store's ``close``)."""
    with _shares_lock:
        _drain_pending()
        _drop(share)


def release_from_finalizer(share: Share) -> None:
    """Drop the hold of a store that was garbage-collected without ``close``: at once if the lock
    is free, else by the next acquire or release (never waits: see ``_pending``)."""
    if _shares_lock.acquire(blocking=False):
        try:
            _drain_pending()
            _drop(share)
        finally:
            _shares_lock.release()
    else:
        _pending.append(share)
