"""The chip store: programmed chips on disk, atomic and verified (DESIGN §4).

Layout under the root folder::

    lock                            the writer's exclusive flock (holder pid, host, time inside)
    chips/<chip_id>/manifest.json   versioned manifest: profile, seeds, layers, array checksums
    chips/<chip_id>/*.npy           the chip's own arrays (device deviations, ν, GDC baselines)
    blobs/<sha256>.npy|.bin         content-addressed arrays and files shared by chips
                                    (target weights, biases, ONNX models), written once,
                                    removed when no chip uses them (chipsim.store_collect)
    tmp/<pid>-<random>/             chips being written or deleted; never read, removed at open

Publishing is atomic: a chip is written completely into ``tmp/``, every file and folder is
fsynced, then the folder is renamed into ``chips/``. A crash at any moment leaves the chip
either absent or complete. Loading verifies the manifest version and every array's sha256,
shape and dtype; any mismatch raises :class:`ChipCorruptError` naming the file. Arrays are
plain ``.npy`` files read with ``allow_pickle=False``: no pickle anywhere.

One writer per folder (chipsim.store_lock): a writing store holds an exclusive OS lock for its
lifetime; a second writing process is refused with :class:`StoreLockedError`. ``read_only=True``
opens a serving replica: no lock, nothing written, every mutation refused.

The manifest's format is :mod:`chipsim.store_format`; the folder (lock, temporary entries, blobs
and their collection) :mod:`chipsim.store_folder`; file access :mod:`chipsim.store_io`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chipsim import store_io, store_lock
from chipsim.state import CHIP_ID_RE, ChipState, check_chip_id
from chipsim.store_collect import CollectReport, DeleteReport
from chipsim.store_errors import (
    ChipCorruptError,
    ChipExistsError,
    ChipNotFoundError,
    ChipStoreError,
    ChipVersionError,
    StoreLockedError,
    StoreReadOnlyError,
    StoreWriteError,
)
from chipsim.store_folder import StoreFolder
from chipsim.store_format import (
    CHIP_ARRAYS,
    FORMAT,
    FORMAT_VERSION,
    SHARED_ARRAYS,
    build_manifest,
    check_manifest,
    chip_from_manifest,
    decode_array,
    layer_entry,
    npy_bytes,
    sha256,
)
from chipsim.store_io import MAX_MANIFEST_BYTES, UnreadableFile, loads_bounded

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ChipCorruptError",
    "ChipExistsError",
    "ChipListing",
    "ChipNotFoundError",
    "ChipStore",
    "ChipStoreError",
    "ChipVersionError",
    "CollectReport",
    "DeleteReport",
    "StoreLockedError",
    "StoreReadOnlyError",
    "StoreWriteError",
]

log = logging.getLogger(__name__)


@dataclass
class ChipListing:
    chip_id: str
    status: str  # "ready" | "corrupt"
    error: str | None = None
    manifest: dict[str, Any] | None = None


class ChipStore(StoreFolder):
    """Chips in a folder: one writing process (with any number of threads) per folder, holding
    the folder's lock for the store's lifetime (until :meth:`close`), and any number of
    read-only replicas (``read_only=True``: no lock, nothing written, mutations refused with
    :class:`StoreReadOnlyError`).

    Opening for writing raises :class:`StoreLockedError` if another process writes the folder,
    :class:`StoreWriteError` if the folder cannot be written. The first store of a process to
    take the lock removes every temporary entry (all were left by dead writers: holding the
    lock proves no other writer lives, whatever pid the entries carry) and collects unused
    blobs; :attr:`open_report` says what that reclaimed.
    """

    @staticmethod
    def _check_id(chip_id: str) -> str:
        """The project's id rule, and the store's own full match, so that whatever happens to the
        checker no id with a newline, slash or dot ever becomes a path."""
        check_chip_id(chip_id)
        if not isinstance(chip_id, str) or CHIP_ID_RE.fullmatch(chip_id) is None:
            raise ValueError(f"chip_id: {chip_id!r} is not a valid chip id")
        return chip_id

    def _raise_if_gone(self, chip_id: str) -> None:
        """A chip deleted while it was being read is not found, not corrupt."""
        if not (self.chips_dir / chip_id).is_dir():
            raise ChipNotFoundError(f"chip_id: no chip {chip_id!r}")

    # ----------------------------------------------------------------- write
    def exists(self, chip_id: str) -> bool:
        return (self.chips_dir / self._check_id(chip_id)).is_dir()

    def save(self, chip: ChipState) -> Path:
        """Publish a chip atomically. Raises :class:`ChipExistsError` if the id is taken,
        :class:`StoreWriteError` (with ``errno``) if storage fails; then nothing of the chip
        stays on disk (temporary files removed, blobs it alone wrote collected)."""
        chip_id = self._check_id(chip.chip_id)
        share = self._require_writer(f"save chip {chip_id!r}")
        final = self.chips_dir / chip_id
        if final.exists():
            raise ChipExistsError(f"chip_id: chip {chip_id!r} already exists (chips are immutable)")
        pins: set[str] = set()
        created: list[str] = []
        tmp: Path | None = None
        published = False
        try:
            tmp = self._new_tmp()
            arrays, layers = self._write_layers(chip, tmp, share, pins, created)
            attachments = {
                name: self._put_blob(share, data, "bin", pins, created) for name, data in chip.attachments.items()
            }
            manifest = build_manifest(chip, layers, arrays, attachments)
            store_io.write_file(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
            self._publish(tmp, final, chip_id)
            published = True
        except OSError as err:
            raise StoreWriteError(f"saving chip {chip_id!r}", err, self._rel(err.filename)) from None
        finally:
            if tmp is not None and tmp.exists():
                store_io.remove_entry(tmp)
            self._unpin(share, pins)
            if not published and created:
                self._collect_quietly(share, only=set(created))
        return final

    def _write_layers(
        self, chip: ChipState, tmp: Path, share: store_lock.Share, pins: set[str], created: list[str]
    ) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]]]:
        """Write the chip's own arrays into ``tmp`` and its shared ones as blobs (pinned in ``pins``,
        new ones listed in ``created``); returns the manifest's ``arrays`` and ``layers``."""
        arrays: dict[str, dict[str, Any]] = {}
        layers = []
        for i, layer in enumerate(chip.layers):
            for name in CHIP_ARRAYS:
                arr = getattr(layer, name)
                data = npy_bytes(arr)
                fname = f"l{i}_{name}.npy"
                store_io.write_file(tmp / fname, data)
                arrays[f"layers/{i}/{name}"] = {
                    "file": fname,
                    "sha256": sha256(data),
                    "shape": list(arr.shape),
                    "dtype": str(arr.dtype),
                }
            for name in SHARED_ARRAYS:
                arr = getattr(layer, name)
                if arr is None:
                    continue
                digest = self._put_blob(share, npy_bytes(arr), "npy", pins, created)
                arrays[f"layers/{i}/{name}"] = {"blob": digest, "shape": list(arr.shape), "dtype": str(arr.dtype)}
            layers.append(layer_entry(layer))
        return arrays, layers

    def _publish(self, tmp: Path, final: Path, chip_id: str) -> None:
        """Rename the complete ``tmp`` folder to ``final`` and make the rename durable."""
        store_io.fsync_dir(tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if a concurrent writer published first
        except OSError:
            if final.exists():
                raise ChipExistsError(f"chip_id: chip {chip_id!r} already exists (chips are immutable)") from None
            raise
        try:
            store_io.fsync_dir(self.chips_dir)
        except OSError:
            self._unpublish(final)  # not known to be durable: the caller is told it failed
            raise

    def _unpublish(self, final: Path) -> None:
        trash = self.tmp_dir / f"{os.getpid()}-del-{uuid.uuid4().hex}"
        try:
            os.rename(final, trash)
        except OSError as err:
            log.error("chip %s was published although its save failed: %s", final.name, err)
            return
        store_io.remove_entry(trash)

    def delete(self, chip_id: str) -> DeleteReport:
        """Remove a chip, then the blobs no other chip uses. The rename out of ``chips/`` is the
        commit: if it (or making it durable) fails, :class:`StoreWriteError` is raised and the
        chip stays complete and loadable. Of concurrent deletes of one chip exactly one succeeds;
        the others raise :class:`ChipNotFoundError`."""
        chip_id = self._check_id(chip_id)
        share = self._require_writer(f"delete chip {chip_id!r}")
        path = self.chips_dir / chip_id
        if not path.is_dir():
            raise ChipNotFoundError(f"chip_id: no chip {chip_id!r}")
        trash = self.tmp_dir / f"{os.getpid()}-del-{uuid.uuid4().hex}"
        action = f"deleting chip {chip_id!r}"
        try:
            os.rename(path, trash)
        except FileNotFoundError as err:
            if not path.exists():  # another delete renamed it first
                raise ChipNotFoundError(f"chip_id: no chip {chip_id!r}") from None
            raise StoreWriteError(action, err, self._rel(err.filename)) from None
        except OSError as err:
            raise StoreWriteError(action, err, self._rel(err.filename)) from None
        try:
            store_io.fsync_dir(self.chips_dir)
        except OSError as err:
            try:
                os.rename(trash, path)
            except OSError as undo:
                log.error("chip %s could not be put back after a failed delete: %s", chip_id, undo)
                action += " (and putting it back failed: it is lost)"
            raise StoreWriteError(action, err, "chips") from None
        chip_bytes = store_io.tree_bytes(trash)
        shutil.rmtree(trash, ignore_errors=True)  # what stays is removed at the next open
        return DeleteReport(chip_id, chip_bytes, self._collect_quietly(share))

    # ----------------------------------------------------------------- read
    def read_manifest(self, chip_id: str) -> dict[str, Any]:
        chip_id = self._check_id(chip_id)
        self._raise_if_gone(chip_id)
        rel = f"chips/{chip_id}/manifest.json"
        try:
            manifest = loads_bounded(
                store_io.read_regular_file(self.chips_dir / chip_id / "manifest.json", MAX_MANIFEST_BYTES)
            )
        except UnreadableFile as err:
            self._raise_if_gone(chip_id)
            raise ChipCorruptError(chip_id, rel, err.reason) from None
        except (ValueError, RecursionError) as err:  # JSON, UTF-8 or depth
            raise ChipCorruptError(chip_id, rel, f"not valid JSON ({str(err)[:200]})") from None
        return check_manifest(manifest, chip_id, rel)

    def _load_array(self, chip_id: str, entry: dict[str, Any]) -> np.ndarray:
        if "blob" in entry:
            rel = f"blobs/{entry['blob']}.npy"
            data = self.get_blob(entry["blob"], "npy", owner=chip_id)
        else:
            rel = f"chips/{chip_id}/{entry['file']}"
            fname = str(entry["file"])
            if "/" in fname or "\\" in fname or fname.startswith("."):
                raise ChipCorruptError(chip_id, rel, "invalid file name in manifest")
            try:
                data = store_io.read_regular_file(self.chips_dir / chip_id / fname)
            except UnreadableFile as err:
                raise ChipCorruptError(chip_id, rel, err.reason) from None
            if sha256(data) != entry["sha256"]:
                raise ChipCorruptError(chip_id, rel, "checksum mismatch (truncated or altered)")
        return decode_array(data, entry, chip_id, rel)

    def load(self, chip_id: str) -> ChipState:
        """Load and verify a chip. Raises ChipNotFoundError, ChipCorruptError, ChipVersionError."""
        chip_id = self._check_id(chip_id)
        try:
            return self._load(chip_id)
        except ChipCorruptError:
            self._raise_if_gone(chip_id)
            raise

    def _load(self, chip_id: str) -> ChipState:
        return chip_from_manifest(
            self.read_manifest(chip_id),
            chip_id,
            lambda entry: self._load_array(chip_id, entry),
            lambda digest: self.get_blob(digest, "bin", owner=chip_id),
        )

    def list(self, verify: bool = False) -> list[ChipListing]:
        """Every chip folder with its status; ``verify`` loads each fully (checksums). A chip that
        cannot be read in any way is listed as corrupt: one chip never stops the listing."""
        out = []
        try:
            entries = sorted(self.chips_dir.iterdir())
        except FileNotFoundError:  # a replica opened before the writer's first start
            return out
        for path in entries:
            if not path.is_dir():
                continue
            try:
                self._check_id(path.name)
                manifest = self.read_manifest(path.name)
                if verify:
                    self.load(path.name)
                out.append(ChipListing(path.name, "ready", manifest=manifest))
            except ChipNotFoundError:
                continue  # deleted while listed
            except (ChipStoreError, ValueError) as err:
                out.append(ChipListing(path.name, "corrupt", error=str(err)))
            except Exception as err:  # anything else about one chip is still that chip's problem
                log.exception("chip folder %r could not be read", path.name)
                out.append(ChipListing(path.name, "corrupt", error=f"unreadable: {type(err).__name__}: {err}"))
        return out

    def disk_bytes(self, chip_id: str) -> int:
        """Bytes of the chip's own files (shared blobs not counted)."""
        path = self.chips_dir / self._check_id(chip_id)
        try:
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        except FileNotFoundError:
            raise ChipNotFoundError(f"chip_id: no chip {chip_id!r}") from None
