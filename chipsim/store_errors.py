"""The chip store's domain errors (DESIGN §4); only the HTTP edge turns them into status codes."""

from __future__ import annotations

import errno as _errno
from pathlib import Path


class ChipStoreError(Exception):
    """Base class of the store's errors."""


class ChipNotFoundError(ChipStoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ChipExistsError(ChipStoreError):
    pass


class ChipCorruptError(ChipStoreError):
    """A chip on disk is truncated, altered or unreadable; ``path`` names the file."""

    def __init__(self, chip_id: str, path: str, reason: str):
        super().__init__(f"chip {chip_id!r} is corrupt: {path}: {reason}")
        self.chip_id, self.path, self.reason = chip_id, path, reason


class ChipVersionError(ChipCorruptError):
    """The chip was written by an incompatible format version."""


class StoreLockedError(ChipStoreError):
    """Another live process holds the state folder for writing (one writer per store)."""

    def __init__(self, root: Path, pid: int | None = None, host: str | None = None, since: str | None = None):
        who = "an unknown process" if pid is None else f"pid {pid}" + (f" on host {host}" if host else "")
        when = f" since {since}" if since else ""
        super().__init__(
            f"state folder {root} is locked by another writer ({who}{when}): a store has one writer. "
            "Stop that process first, or open the folder read-only to serve beside it."
        )
        self.root, self.pid, self.host = root, pid, host


class StoreReadOnlyError(ChipStoreError):
    """A mutation was asked of a store opened read-only (a serving replica)."""


class StoreWriteError(ChipStoreError):
    """Storage refused a write (disk full, read-only filesystem, I/O error, permission).

    ``errno`` is the OS error number (e.g. ``errno.ENOSPC``), ``errno_name`` its symbol; the
    chips on disk are left in their old state."""

    def __init__(self, action: str, err: OSError, path: str | None = None):
        self.errno = err.errno
        self.errno_name = _errno.errorcode.get(err.errno, str(err.errno)) if err.errno is not None else "E?"
        self.strerror = err.strerror or str(err)
        self.action, self.path = action, path if path is not None else err.filename
        where = f" ({self.path})" if self.path else ""
        super().__init__(f"storage failed while {action}: {self.strerror} [{self.errno_name}]{where}")

    @property
    def disk_full(self) -> bool:
        return self.errno in (_errno.ENOSPC, _errno.EDQUOT)
