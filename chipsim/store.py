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
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import uuid
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chipsim import store_lock
from chipsim.profiles import ProfileError, profile_from_dict
from chipsim.state import CHIP_ID_RE, ChipState, LayerState, check_chip_id
from chipsim.store_collect import BLOB_NAME, CollectReport, DeleteReport, MarkBlocked, referenced_digests
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
from chipsim.store_io import MAX_MANIFEST_BYTES, UnreadableFile, loads_bounded, read_regular_file

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

FORMAT = "agedchip-chip"
FORMAT_VERSION = 1


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_digest(manifest: dict[str, Any]) -> str:
    """sha256 of the manifest's canonical JSON without its own checksum field: a changed seed
    or profile value would silently change every read-out, so the manifest is checked too."""
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode())


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class ChipListing:
    chip_id: str
    status: str  # "ready" | "corrupt"
    error: str | None = None
    manifest: dict[str, Any] | None = None


# Arrays that belong to the chip (written per chip) and to the model (shared blobs).
_CHIP_ARRAYS = ("dg_us", "nu", "gdc_baseline", "gdc_baseline_col", "gdc_baseline_exact")
_SHARED_ARRAYS = ("weight", "bias")


def _tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (0 for what cannot be read)."""
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.lstat().st_size
        except OSError:
            pass
    return total


def _remove(entry: Path) -> None:
    """Remove a file or a folder, ignoring what cannot be removed (it is garbage either way)."""
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    except OSError as err:
        log.warning("could not remove %s: %s", entry, err)


class ChipStore:
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
            _remove(entry)
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

    def __enter__(self) -> ChipStore:
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
        digest = _sha256(data)
        self._pin(share, digest, pins)
        final = self.blobs_dir / f"{digest}.{ext}"
        if not final.exists():
            tmp = self.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}.{ext}"
            try:
                _write_file(tmp, data)
                os.replace(tmp, final)
                created.append(digest)
                _fsync_dir(self.blobs_dir)
            finally:
                _remove(tmp)
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
            data = read_regular_file(self.blobs_dir / f"{digest}.{ext}")
        except UnreadableFile as err:
            reason = "shared file is missing" if err.reason == "missing" else f"shared file {err.reason}"
            raise ChipCorruptError(owner, f"blobs/{digest}.{ext}", reason) from None
        if _sha256(data) != digest:
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
                _fsync_dir(self.blobs_dir)
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
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "chip_id": chip_id,
                "profile": chip.profile.model_dump(mode="json"),
                "seed": chip.seed,
                "programmed_at": chip.programmed_at,
                "meta": chip.meta,
                "layers": layers,
                "arrays": arrays,
                "attachments": attachments,
                "n_weights": chip.n_weights,
            }
            manifest["manifest_sha256"] = _manifest_digest(manifest)
            _write_file(tmp / "manifest.json", json.dumps(manifest, indent=1, sort_keys=True).encode())
            self._publish(tmp, final, chip_id)
            published = True
        except OSError as err:
            raise StoreWriteError(f"saving chip {chip_id!r}", err, self._rel(err.filename)) from None
        finally:
            if tmp is not None and tmp.exists():
                _remove(tmp)
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
            for name in _CHIP_ARRAYS:
                arr = getattr(layer, name)
                data = _npy_bytes(arr)
                fname = f"l{i}_{name}.npy"
                _write_file(tmp / fname, data)
                arrays[f"layers/{i}/{name}"] = {
                    "file": fname,
                    "sha256": _sha256(data),
                    "shape": list(arr.shape),
                    "dtype": str(arr.dtype),
                }
            for name in _SHARED_ARRAYS:
                arr = getattr(layer, name)
                if arr is None:
                    continue
                digest = self._put_blob(share, _npy_bytes(arr), "npy", pins, created)
                arrays[f"layers/{i}/{name}"] = {"blob": digest, "shape": list(arr.shape), "dtype": str(arr.dtype)}
            layers.append(
                {
                    "name": layer.name,
                    "input_range": layer.input_range,
                    "tiles": [list(t) for t in layer.tiles],
                    "meta": layer.meta,
                }
            )
        return arrays, layers

    def _publish(self, tmp: Path, final: Path, chip_id: str) -> None:
        """Rename the complete ``tmp`` folder to ``final`` and make the rename durable."""
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if a concurrent writer published first
        except OSError:
            if final.exists():
                raise ChipExistsError(f"chip_id: chip {chip_id!r} already exists (chips are immutable)") from None
            raise
        try:
            _fsync_dir(self.chips_dir)
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
        _remove(trash)

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
            _fsync_dir(self.chips_dir)
        except OSError as err:
            try:
                os.rename(trash, path)
            except OSError as undo:
                log.error("chip %s could not be put back after a failed delete: %s", chip_id, undo)
                action += " (and putting it back failed: it is lost)"
            raise StoreWriteError(action, err, "chips") from None
        chip_bytes = _tree_bytes(trash)
        shutil.rmtree(trash, ignore_errors=True)  # what stays is removed at the next open
        return DeleteReport(chip_id, chip_bytes, self._collect_quietly(share))

    # ----------------------------------------------------------------- read
    def read_manifest(self, chip_id: str) -> dict[str, Any]:
        chip_id = self._check_id(chip_id)
        self._raise_if_gone(chip_id)
        rel = f"chips/{chip_id}/manifest.json"
        try:
            manifest = loads_bounded(read_regular_file(self.chips_dir / chip_id / "manifest.json", MAX_MANIFEST_BYTES))
        except UnreadableFile as err:
            self._raise_if_gone(chip_id)
            raise ChipCorruptError(chip_id, rel, err.reason) from None
        except (ValueError, RecursionError) as err:  # JSON, UTF-8 or depth
            raise ChipCorruptError(chip_id, rel, f"not valid JSON ({str(err)[:200]})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ChipCorruptError(chip_id, rel, "not an agedchip chip manifest")
        if manifest.get("version") != FORMAT_VERSION:
            raise ChipVersionError(
                chip_id,
                rel,
                f"format version {manifest.get('version')!r}, this build reads version {FORMAT_VERSION}",
            )
        if manifest.get("manifest_sha256") != _manifest_digest(manifest):
            raise ChipCorruptError(chip_id, rel, "manifest checksum mismatch (altered)")
        return manifest

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
                data = read_regular_file(self.chips_dir / chip_id / fname)
            except UnreadableFile as err:
                raise ChipCorruptError(chip_id, rel, err.reason) from None
            if _sha256(data) != entry["sha256"]:
                raise ChipCorruptError(chip_id, rel, "checksum mismatch (truncated or altered)")
        try:
            arr = np.load(io.BytesIO(data), allow_pickle=False)
        except Exception as err:  # any decoding failure is corruption
            raise ChipCorruptError(chip_id, rel, f"unreadable array ({err})") from None
        if list(arr.shape) != list(entry["shape"]) or str(arr.dtype) != entry["dtype"]:
            raise ChipCorruptError(chip_id, rel, f"shape/dtype {arr.shape}/{arr.dtype} differ from the manifest")
        return arr

    def load(self, chip_id: str) -> ChipState:
        """Load and verify a chip. Raises ChipNotFoundError, ChipCorruptError, ChipVersionError."""
        chip_id = self._check_id(chip_id)
        try:
            return self._load(chip_id)
        except ChipCorruptError:
            self._raise_if_gone(chip_id)
            raise

    def _load(self, chip_id: str) -> ChipState:
        manifest = self.read_manifest(chip_id)
        mrel = f"chips/{chip_id}/manifest.json"
        try:
            profile = profile_from_dict(manifest["profile"])
            arrays = manifest["arrays"]
            layers = []
            for i, lmeta in enumerate(manifest["layers"]):
                get = {name: self._load_array(chip_id, arrays[f"layers/{i}/{name}"]) for name in _CHIP_ARRAYS}
                weight = self._load_array(chip_id, arrays[f"layers/{i}/weight"])
                bias_entry = arrays.get(f"layers/{i}/bias")
                layers.append(
                    LayerState(
                        name=lmeta["name"],
                        weight=weight,
                        input_range=float(lmeta["input_range"]),
                        tiles=[(int(a), int(b)) for a, b in lmeta["tiles"]],
                        bias=None if bias_entry is None else self._load_array(chip_id, bias_entry),
                        meta=lmeta.get("meta", {}),
                        **get,
                    )
                )
            attachments = {
                name: self.get_blob(digest, "bin", owner=chip_id) for name, digest in manifest["attachments"].items()
            }
            chip = ChipState(
                chip_id=manifest["chip_id"],
                profile=profile,
                seed=int(manifest["seed"]),
                programmed_at=float(manifest["programmed_at"]),
                layers=layers,
                meta=manifest.get("meta", {}),
                attachments=attachments,
            )
        except ChipCorruptError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, ProfileError) as err:
            raise ChipCorruptError(chip_id, mrel, f"inconsistent manifest ({type(err).__name__}: {err})") from None
        if chip.chip_id != chip_id:
            raise ChipCorruptError(chip_id, mrel, f"manifest names chip {chip.chip_id!r}")
        return chip

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
