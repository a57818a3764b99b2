"""The folder under a chip store (DESIGN §4): its writer's lock, its temporary entries and its
content-addressed blobs with their collection. :class:`~chipsim.store.ChipStore` builds the chips
on it; the layout and the guarantees are described in :mod:`chipsim.store`.
"""

from __future__ import annotations

import logging
import os
import uuid
import weakref
from pathlib import Path
from typing import Any, Self

from chipsim import store_io, store_lock
from chipsim.store_collect import BLOB_NAME, CollectReport, MarkBlocked, referenced_digests
from chipsim.store_errors import ChipCorruptError, ChipStoreError, StoreReadOnlyError, StoreWriteError
from chipsim.store_format import sha256
from chipsim.store_io import UnreadableFile

# The store's logger: these messages are the chip store's, whichever module writes them.
log = logging.getLogger("chipsim.store")


class StoreFolder:
    """A store's folder, opened for writing (holding its lock until :meth:`close`) or read-only
    (no lock, nothing written, mutations refused with :class:`StoreReadOnlyError`); see
    :class:`~chipsim.store.ChipStore` for what opening raises."""

    def __init__(self, root: str | os.PathLike, read_only: bool = False):
        self.root = Path(root)
        self.read_only = bool(read_only)
        self.chips_dir = self.root / "chips"
        self.blobs_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.open_report: CollectReport | None = None
        self._share: store_lock.Share | None = None
        self._closed = False
        if self.read_only:
            if not self.root.is_dir():
                raise ChipStoreError(f"state folder {self.root} does not exist (a read-only store creates nothing)")
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreWriteError(f"creating the state folder {self.root}", err) from None
        self._share, _ = store_lock.acquire(self.root, self._on_lock_taken)
        self._finalizer = weakref.finalize(self, store_lock.release_from_finalizer, self._share)

    def _on_lock_taken(self, share: store_lock.Share) -> None:
        for d in (self.chips_dir, self.blobs_dir, self.tmp_dir):
            try:
                d.mkdir(exist_ok=True)
            except OSError as err:
                raise StoreWriteError(f"creating {d}", err) from None
        removed = 0
        for entry in self.tmp_dir.iterdir():
            store_io.remove_entry(entry)
            removed += 1
        report = self._collect_quietly(share)
        self.open_report = CollectReport(
            report.blobs_removed, report.blob_bytes, report.blobs_kept, removed, report.skipped
        )

    def close(self) -> None:
        """Release this store's hold on the folder's lock (idempotent); reads still work."""
        self._closed = True
        if self._share is not None and self._finalizer.detach() is not None:
            store_lock.release(self._share)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- checks
    def _require_writer(self, action: str) -> store_lock.Share:
        if self.read_only:
            raise StoreReadOnlyError(f"state folder {self.root} is open read-only: cannot {action}")
        if self._closed or self._share is None:
            raise ChipStoreError(f"the store of {self.root} is closed: cannot {action}")
        if self._share.pid != os.getpid():
            raise ChipStoreError(
                f"the store of {self.root} was opened by pid {self._share.pid} before a fork: "
                f"cannot {action} from pid {os.getpid()} (open a store of its own)"
            )
        return self._share

    def _rel(self, path: Any) -> str | None:
        if path is None:
            return None
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    # ----------------------------------------------------------------- blobs
    def _new_tmp(self) -> Path:
        path = self.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}"
        path.mkdir()
        return path

    def _pin(self, share: store_lock.Share, digest: str, pins: set[str]) -> None:
        if digest not in pins:
            with share.mutex:
                share.pins[digest] += 1
            pins.add(digest)

    def _unpin(self, share: store_lock.Share, pins: set[str]) -> None:
        with share.mutex:
            for digest in pins:
                share.pins[digest] -= 1
                if share.pins[digest] <= 0:
                    del share.pins[digest]

    def _put_blob(self, share: store_lock.Share, data: bytes, ext: str, pins: set[str], created: list[str]) -> str:
        """Pin, then write if absent (the pin keeps a collection from removing it until the
        chip using it is published; see chipsim.store_collect). Raises OSError."""
        digest = sha256(data)
        self._pin(share, digest, pins)
        final = self.blobs_dir / f"{digest}.{ext}"
        if not final.exists():
            tmp = self.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}.{ext}"
            try:
                store_io.write_file(tmp, data)
                os.replace(tmp, final)
                created.append(digest)
                store_io.fsync_dir(self.blobs_dir)
            finally:
                store_io.remove_entry(tmp)
        return digest

    def put_blob(self, data: bytes, ext: str = "bin") -> str:
        """Store bytes once under their sha256; returns the digest. A blob no chip references is
        removed by the next collection."""
        share = self._require_writer("write a blob")
        pins: set[str] = set()
        try:
            return self._put_blob(share, data, ext, pins, [])
        except OSError as err:
            raise StoreWriteError("writing a shared blob", err, self._rel(err.filename)) from None
        finally:
            self._unpin(share, pins)

    def get_blob(self, digest: str, ext: str = "bin", owner: str = "?") -> bytes:
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise ChipCorruptError(owner, f"blobs/{digest}.{ext}", "invalid digest in manifest")
        try:
            data = store_io.read_regular_file(self.blobs_dir / f"{digest}.{ext}")
        except UnreadableFile as err:
            reason = "shared file is missing" if err.reason == "missing" else f"shared file {err.reason}"
            raise ChipCorruptError(owner, f"blobs/{digest}.{ext}", reason) from None
        if sha256(data) != digest:
            raise ChipCorruptError(owner, f"blobs/{digest}.{ext}", "checksum mismatch")
        return data

    # ----------------------------------------------------------------- collection
    def _collect(self, share: store_lock.Share, only: set[str] | None = None) -> CollectReport:
        """Mark and sweep (crash safety argued in chipsim.store_collect). ``only`` limits the
        sweep to those digests. Raises OSError."""
        with share.mutex:
            try:
                used = referenced_digests(self.chips_dir)
            except MarkBlocked as why:
                log.warning("blob collection skipped: %s", why)
                return CollectReport(skipped=str(why))
            used.update(d for d, n in share.pins.items() if n > 0)
            removed = reclaimed = kept = 0
            for entry in sorted(self.blobs_dir.iterdir()):
                name = BLOB_NAME.fullmatch(entry.name)
                if name is None:
                    continue  # not a blob: not ours to remove
                if name[1] in used or (only is not None and name[1] not in only):
                    kept += 1
                    continue
                try:
                    size = entry.lstat().st_size
                    entry.unlink()
                except FileNotFoundError:
                    continue
                removed += 1
                reclaimed += size
            if removed:
                store_io.fsync_dir(self.blobs_dir)
        return CollectReport(blobs_removed=removed, blob_bytes=reclaimed, blobs_kept=kept)

    def _collect_quietly(self, share: store_lock.Share, only: set[str] | None = None) -> CollectReport:
        """A collection after a delete, a failed save or at open: a failure leaves unused blobs
        for the next one, so it is reported, not raised."""
        try:
            return self._collect(share, only)
        except OSError as err:
            log.warning("blob collection failed: %s", err)
            return CollectReport(skipped=f"{err.strerror or err} ({self._rel(err.filename)})")

    def collect(self) -> CollectReport:
        """Remove every shared blob no chip uses; returns what was reclaimed."""
        share = self._require_writer("collect unused blobs")
        try:
            return self._collect(share)
        except OSError as err:
            raise StoreWriteError("collecting unused blobs", err, self._rel(err.filename)) from None
