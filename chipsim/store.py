"""The chip store: programmed chips on disk, atomic and verified (DESIGN §4).

Layout under the root folder::

    chips/<chip_id>/manifest.json   versioned manifest: profile, seeds, layers, array checksums
    chips/<chip_id>/*.npy           the chip's own arrays (device deviations, ν, GDC baselines)
    blobs/<sha256>.npy|.bin         content-addressed arrays and files shared by chips
                                    (target weights, biases, ONNX models), written once
    tmp/<pid>-<random>/             chips being written; never read, removed when stale

Publishing is atomic: a chip is written completely into ``tmp/``, every file and folder is
fsynced, then the folder is renamed into ``chips/``. A crash at any moment leaves the chip
either absent or complete. Loading verifies the manifest version and every array's sha256,
shape and dtype; any mismatch raises :class:`ChipCorruptError` naming the file. Arrays are
plain ``.npy`` files read with ``allow_pickle=False``: no pickle anywhere.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from chipsim.profiles import ProfileError, profile_from_dict
from chipsim.state import ChipState, LayerState, check_chip_id

FORMAT = "agedchip-chip"
FORMAT_VERSION = 1


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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class ChipListing:
    chip_id: str
    status: str  # "ready" | "corrupt"
    error: str | None = None
    manifest: dict[str, Any] | None = None


# Arrays that belong to the chip (written per chip) and to the model (shared blobs).
_CHIP_ARRAYS = ("dg_us", "nu", "gdc_baseline", "gdc_baseline_col", "gdc_baseline_exact")
_SHARED_ARRAYS = ("weight", "bias")


class ChipStore:
    """Chips in a folder. Safe for one writer process with many reader threads."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.chips_dir = self.root / "chips"
        self.blobs_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        for d in (self.chips_dir, self.blobs_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._clean_stale_tmp()

    # ----------------------------------------------------------------- housekeeping
    def _clean_stale_tmp(self) -> None:
        """Remove leftovers of writers that died (their pid is gone)."""
        for entry in self.tmp_dir.iterdir():
            pid = entry.name.split("-", 1)[0]
            # Our own pid's entries may be saves in progress in another thread: keep them.
            if not pid.isdigit() or (int(pid) != os.getpid() and not _pid_alive(int(pid))):
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)

    def _new_tmp(self) -> Path:
        path = self.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}"
        path.mkdir()
        return path

    # ----------------------------------------------------------------- blobs
    def put_blob(self, data: bytes, ext: str = "bin") -> str:
        """Store bytes once under their sha256; returns the digest."""
        digest = _sha256(data)
        final = self.blobs_dir / f"{digest}.{ext}"
        if not final.exists():
            tmp = self.tmp_dir / f"{os.getpid()}-{uuid.uuid4().hex}.{ext}"
            _write_file(tmp, data)
            os.replace(tmp, final)
            _fsync_dir(self.blobs_dir)
        return digest

    def get_blob(self, digest: str, ext: str = "bin", owner: str = "?") -> bytes:
        if not (len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise ChipCorruptError(owner, f"blobs/{digest}.{ext}", "invalid digest in manifest")
        path = self.blobs_dir / f"{digest}.{ext}"
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ChipCorruptError(owner, f"blobs/{digest}.{ext}", "shared file is missing") from None
        if _sha256(data) != digest:
            raise ChipCorruptError(owner, f"blobs/{digest}.{ext}", "checksum mismatch")
        return data

    # ----------------------------------------------------------------- write
    def exists(self, chip_id: str) -> bool:
        return (self.chips_dir / check_chip_id(chip_id)).is_dir()

    def save(self, chip: ChipState) -> Path:
        """Publish a chip atomically. Raises :class:`ChipExistsError` if the id is taken."""
        check_chip_id(chip.chip_id)
        final = self.chips_dir / chip.chip_id
        if final.exists():
            raise ChipExistsError(f"chip_id: chip {chip.chip_id!r} already exists (chips are immutable)")
        tmp = self._new_tmp()
        try:
            arrays: dict[str, dict[str, Any]] = {}
            layers = []
            for i, layer in enumerate(chip.layers):
                for name in _CHIP_ARRAYS:
                    arr = getattr(layer, name)
                    data = _npy_bytes(arr)
                    fname = f"l{i}_{name}.npy"
                    _write_file(tmp / fname, data)
                    arrays[f"layers/{i}/{name}"] = {
                        "file": fname, "sha256": _sha256(data), "shape": list(arr.shape), "dtype": str(arr.dtype)
                    }
                for name in _SHARED_ARRAYS:
                    arr = getattr(layer, name)
                    if arr is None:
                        continue
                    digest = self.put_blob(_npy_bytes(arr), "npy")
                    arrays[f"layers/{i}/{name}"] = {
                        "blob": digest, "shape": list(arr.shape), "dtype": str(arr.dtype)
                    }
                layers.append({
                    "name": layer.name, "input_range": layer.input_range,
                    "tiles": [list(t) for t in layer.tiles], "meta": layer.meta,
                })
            attachments = {name: self.put_blob(data, "bin") for name, data in chip.attachments.items()}
            manifest = {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "chip_id": chip.chip_id,
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
            _fsync_dir(tmp)
            try:
                os.rename(tmp, final)  # atomic; fails if a concurrent writer published first
            except OSError:
                if final.exists():
                    raise ChipExistsError(f"chip_id: chip {chip.chip_id!r} already exists (chips are immutable)") from None
                raise
            _fsync_dir(self.chips_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def delete(self, chip_id: str) -> None:
        """Remove a chip: renamed out of ``chips/`` first (atomic), then deleted."""
        path = self.chips_dir / check_chip_id(chip_id)
        if not path.is_dir():
            raise ChipNotFoundError(f"chip_id: no chip {chip_id!r}")
        trash = self.tmp_dir / f"{os.getpid()}-del-{uuid.uuid4().hex}"
        os.rename(path, trash)
        _fsync_dir(self.chips_dir)
        shutil.rmtree(trash, ignore_errors=True)

    # ----------------------------------------------------------------- read
    def read_manifest(self, chip_id: str) -> dict[str, Any]:
        path = self.chips_dir / check_chip_id(chip_id)
        if not path.is_dir():
            raise ChipNotFoundError(f"chip_id: no chip {chip_id!r}")
        mpath = path / "manifest.json"
        try:
            manifest = json.loads(mpath.read_bytes())
        except FileNotFoundError:
            raise ChipCorruptError(chip_id, f"chips/{chip_id}/manifest.json", "missing") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ChipCorruptError(chip_id, f"chips/{chip_id}/manifest.json", f"not valid JSON ({err})") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise ChipCorruptError(chip_id, f"chips/{chip_id}/manifest.json", "not an agedchip chip manifest")
        if manifest.get("version") != FORMAT_VERSION:
            raise ChipVersionError(
                chip_id, f"chips/{chip_id}/manifest.json",
                f"format version {manifest.get('version')!r}, this build reads version {FORMAT_VERSION}",
            )
        if manifest.get("manifest_sha256") != _manifest_digest(manifest):
            raise ChipCorruptError(chip_id, f"chips/{chip_id}/manifest.json", "manifest checksum mismatch (altered)")
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
                data = (self.chips_dir / chip_id / fname).read_bytes()
            except FileNotFoundError:
                raise ChipCorruptError(chip_id, rel, "missing") from None
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
                layers.append(LayerState(
                    name=lmeta["name"], weight=weight, input_range=float(lmeta["input_range"]),
                    tiles=[(int(a), int(b)) for a, b in lmeta["tiles"]],
                    bias=None if bias_entry is None else self._load_array(chip_id, bias_entry),
                    meta=lmeta.get("meta", {}), **get,
                ))
            attachments = {
                name: self.get_blob(digest, "bin", owner=chip_id) for name, digest in manifest["attachments"].items()
            }
            chip = ChipState(
                chip_id=manifest["chip_id"], profile=profile, seed=int(manifest["seed"]),
                programmed_at=float(manifest["programmed_at"]), layers=layers,
                meta=manifest.get("meta", {}), attachments=attachments,
            )
        except ChipCorruptError:
            raise
        except (KeyError, TypeError, ValueError, ProfileError) as err:
            raise ChipCorruptError(chip_id, mrel, f"inconsistent manifest ({type(err).__name__}: {err})") from None
        if chip.chip_id != chip_id:
            raise ChipCorruptError(chip_id, mrel, f"manifest names chip {chip.chip_id!r}")
        return chip

    def list(self, verify: bool = False) -> list[ChipListing]:
        """Every chip folder with its status; ``verify`` loads each fully (checksums)."""
        out = []
        for path in sorted(self.chips_dir.iterdir()):
            if not path.is_dir():
                continue
            try:
                check_chip_id(path.name)
                manifest = self.read_manifest(path.name)
                if verify:
                    self.load(path.name)
                out.append(ChipListing(path.name, "ready", manifest=manifest))
            except (ChipStoreError, ValueError) as err:
                out.append(ChipListing(path.name, "corrupt", error=str(err)))
        return out

    def disk_bytes(self, chip_id: str) -> int:
        """Bytes of the chip's own files (shared blobs not counted)."""
        path = self.chips_dir / check_chip_id(chip_id)
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
