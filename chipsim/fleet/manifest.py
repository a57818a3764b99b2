"""Fleet manifests beside the chip store, published atomically, never half-published.

Layout under the chip store's root (the store itself is untouched; fleet chips are ordinary
chips named ``<fleet>-000`` …, tagged ``meta.fleet = {id, index, seed}``)::

    fleets/<fleet_id>.json           the published fleet: spec, chip ids, seeds and chip digests
    fleets/<fleet_id>.pending.json   a marker: this fleet is being programmed or deleted
    fleets/.tmp-<pid>-<random>.json  a manifest being written; never read

**The rule.** A fleet exists exactly when its manifest exists. The writer creates the marker
(exclusively) before its first chip, publishes the manifest (fsync, exclusive link: atomic)
after its last chip, and removes the marker after that. Deleting goes the other way: marker,
unlink the manifest, delete the chips, remove the marker. A marker whose writer is gone (its
process died: pid not alive, or this pid but another process instance) is **rolled back when a
writer opens the fleet store**: the chips it lists that carry its fleet tag are deleted, then the
marker. So a crash at any moment leaves the fleet published whole, or absent with its chips
cleaned on the next open. Chips tagged with a fleet that has neither manifest nor marker (only
possible by hand: a manifest deleted outside this module) are never deleted automatically:
:meth:`FleetStore.orphans` lists them.

A read-only fleet store (serving replicas) never writes: it lists published fleets only.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chipsim.fleet.errors import FleetCorruptError, FleetError, FleetExistsError, FleetNotFoundError
from chipsim.fleet.spec import FleetSpec, check_fleet_id
from chipsim.store import ChipNotFoundError, ChipStore, ChipStoreError

FORMAT = "agedchip-fleet"
FORMAT_VERSION = 1
#: Identifies this process instance in markers: a pid alone is reused across container restarts
#: (a service that is pid 1 would otherwise never recover its own stale markers).
PROCESS_TOKEN = uuid.uuid4().hex


def open_chip_store(root: str | os.PathLike, read_only: bool = False) -> ChipStore:
    """A ChipStore; read-only where this chipsim build offers it (``ChipStore(root, read_only=True)``:
    no writer lock, no writes), else a plain one (workers only read from it either way)."""
    if read_only and "read_only" in inspect.signature(ChipStore).parameters:
        return ChipStore(root, read_only=True)  # type: ignore[call-arg]
    return ChipStore(root)


def chip_digest(manifest: dict[str, Any]) -> str:
    """A stored chip's content digest: its manifest's sha256, which covers the sha256 of every
    array and blob the chip reads (chipsim.store), so equal digests mean identical chips."""
    return str(manifest["manifest_sha256"])


def _canonical_sha256(body: dict[str, Any]) -> str:
    body = {k: v for k, v in body.items() if k != "manifest_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


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


@dataclass(frozen=True)
class FleetChip:
    index: int
    chip_id: str
    seed: int  # programming seed, chipsim.fleet.spec.chip_seed(fleet seed, index)
    digest: str  # the chip manifest's sha256 at programming (chip_digest)


@dataclass(frozen=True)
class Fleet:
    """A published fleet, as its manifest says."""

    spec: FleetSpec
    chips: list[FleetChip]
    model_digest: str
    fp_accuracy: float | None  # the model's floating-point accuracy on the eval set (ratio)
    eval_samples: int  # 0: no eval set
    created_at: float  # Unix time, s
    programming_s: float
    profile: dict[str, Any] = field(default_factory=dict)  # the resolved profile, all fields

    @property
    def fleet_id(self) -> str:
        return self.spec.fleet_id

    def to_manifest(self) -> dict[str, Any]:
        body = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "fleet_id": self.fleet_id,
            "spec": self.spec.model_dump(mode="json"),
            "profile": self.profile,
            "seed_derivation": "chip_seed(fleet seed, index): sha256('agedchip-fleet-v1:<seed>:<index>')[:8] >> 1",
            "chips": [{"index": c.index, "chip_id": c.chip_id, "seed": c.seed, "digest": c.digest} for c in self.chips],
            "model_digest": self.model_digest,
            "fp_accuracy": self.fp_accuracy,
            "eval_samples": self.eval_samples,
            "created_at": self.created_at,
            "programming_s": self.programming_s,
        }
        body["manifest_sha256"] = _canonical_sha256(body)
        return body

    @classmethod
    def from_manifest(cls, m: dict[str, Any], where: str) -> Fleet:
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise FleetCorruptError(f"{where}: not an agedchip fleet manifest", "fleet_id")
        if m.get("version") != FORMAT_VERSION:
            raise FleetCorruptError(
                f"{where}: format version {m.get('version')!r}, this build reads {FORMAT_VERSION}", "fleet_id"
            )
        if m.get("manifest_sha256") != _canonical_sha256(m):
            raise FleetCorruptError(f"{where}: manifest checksum mismatch (altered)", "fleet_id")
        try:
            return cls(
                spec=FleetSpec.model_validate(m["spec"]),
                chips=[
                    FleetChip(int(c["index"]), str(c["chip_id"]), int(c["seed"]), str(c["digest"])) for c in m["chips"]
                ],
                model_digest=str(m["model_digest"]),
                fp_accuracy=None if m["fp_accuracy"] is None else float(m["fp_accuracy"]),
                eval_samples=int(m["eval_samples"]),
                created_at=float(m["created_at"]),
                programming_s=float(m["programming_s"]),
                profile=dict(m["profile"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise FleetCorruptError(
                f"{where}: inconsistent manifest ({type(err).__name__}: {err})", "fleet_id"
            ) from None


@dataclass
class FleetListing:
    fleet_id: str
    status: str  # "ready" | "corrupt" | "pending" (being programmed or deleted by a live writer)
    fleet: Fleet | None = None
    error: str | None = None


class FleetStore:
    """Fleet manifests of one chip store. One writer (the chip store's), any number of readers."""

    def __init__(self, store: ChipStore, read_only: bool = False):
        self.store = store
        self.read_only = read_only
        self.dir = Path(store.root) / "fleets"
        if not read_only:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.recover()

    # ------------------------------------------------------------------ paths
    def manifest_path(self, fleet_id: str) -> Path:
        check_fleet_id(fleet_id)  # also rejects path tricks
        return self.dir / f"{fleet_id}.json"

    def marker_path(self, fleet_id: str) -> Path:
        return self.manifest_path(fleet_id).with_suffix(".pending.json")

    def _write_tmp(self, body: dict[str, Any]) -> Path:
        tmp = self.dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}.json"
        with open(tmp, "wb") as f:
            f.write(json.dumps(body, indent=1, sort_keys=True).encode())
            f.flush()
            os.fsync(f.fileno())
        return tmp

    def _link_exclusive(self, body: dict[str, Any], final: Path) -> bool:
        """Publish a complete file under ``final`` unless it exists (link is atomic and exclusive)."""
        tmp = self._write_tmp(body)
        try:
            os.link(tmp, final)
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_dir(self.dir)
        return True

    def _check_writable(self) -> None:
        if self.read_only:
            raise PermissionError("the fleet store is open read-only")

    # ------------------------------------------------------------------ markers
    def begin(self, fleet_id: str, op: str, chip_ids: list[str]) -> None:
        """Mark ``fleet_id`` as being programmed or deleted (``op``); exclusive."""
        self._check_writable()
        body = {
            "fleet_id": fleet_id,
            "op": op,
            "pid": os.getpid(),
            "token": PROCESS_TOKEN,
            "started_at": time.time(),
            "chip_ids": chip_ids,
        }
        if not self._link_exclusive(body, self.marker_path(fleet_id)):
            raise FleetExistsError(f"fleet_id: fleet {fleet_id!r} is being programmed or deleted", "fleet_id")

    def end(self, fleet_id: str) -> None:
        self.marker_path(fleet_id).unlink(missing_ok=True)
        _fsync_dir(self.dir)

    def _marker(self, path: Path) -> dict[str, Any] | None:
        try:
            m = json.loads(path.read_bytes())
            return m if isinstance(m, dict) else None
        except (OSError, ValueError):
            return None

    def _stale(self, marker: dict[str, Any] | None) -> bool:
        if marker is None:  # unreadable: it was linked complete, so only tampering gets here
            return True
        pid = marker.get("pid")
        if not isinstance(pid, int):
            return True
        if pid == os.getpid():
            return marker.get("token") != PROCESS_TOKEN
        return not _pid_alive(pid)

    def recover(self) -> list[str]:
        """Roll back every fleet whose writer died mid-programming or mid-deletion; returns their
        ids. Also removes stale temporary manifests."""
        self._check_writable()
        rolled = []
        for path in sorted(self.dir.glob("*.pending.json")):
            marker = self._marker(path)
            if not self._stale(marker):
                continue
            fleet_id = path.name[: -len(".pending.json")]
            ids = [c for c in (marker or {}).get("chip_ids", []) if isinstance(c, str)]
            self.delete_chips(fleet_id, ids)
            path.unlink(missing_ok=True)
            rolled.append(fleet_id)
        for tmp in self.dir.glob(".tmp-*.json"):
            pid = tmp.name.split("-")[1]
            if not pid.isdigit() or (int(pid) != os.getpid() and not _pid_alive(int(pid))):
                tmp.unlink(missing_ok=True)
        if rolled:
            _fsync_dir(self.dir)
        return rolled

    def delete_chips(self, fleet_id: str, chip_ids: list[str]) -> None:
        """Delete the chips among ``chip_ids`` that carry ``fleet_id``'s tag (never a stranger's)."""
        for chip_id in chip_ids:
            try:
                tag = self.store.read_manifest(chip_id).get("meta", {}).get("fleet", {})
            except ChipNotFoundError:
                continue
            except (ChipStoreError, ValueError):
                tag = None  # corrupt: delete only what the marker names under the fleet's prefix
                if not chip_id.startswith(f"{fleet_id}-"):
                    continue
            if tag is None or (isinstance(tag, dict) and tag.get("id") == fleet_id):
                try:
                    self.store.delete(chip_id)
                except ChipNotFoundError:
                    pass

    # ------------------------------------------------------------------ publish, read, delete
    def publish(self, fleet: Fleet) -> None:
        self._check_writable()
        if not self._link_exclusive(fleet.to_manifest(), self.manifest_path(fleet.fleet_id)):
            raise FleetExistsError(f"fleet_id: fleet {fleet.fleet_id!r} already exists", "fleet_id")

    def exists(self, fleet_id: str) -> bool:
        """Published, or being programmed/deleted."""
        return self.manifest_path(fleet_id).exists() or self.marker_path(fleet_id).exists()

    def get(self, fleet_id: str) -> Fleet:
        path = self.manifest_path(fleet_id)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise FleetNotFoundError(f"fleet_id: no fleet {fleet_id!r}", "fleet_id") from None
        try:
            manifest = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as err:
            raise FleetCorruptError(f"fleets/{fleet_id}.json: not valid JSON ({err})", "fleet_id") from None
        fleet = Fleet.from_manifest(manifest, f"fleets/{fleet_id}.json")
        if fleet.fleet_id != fleet_id:
            raise FleetCorruptError(f"fleets/{fleet_id}.json names fleet {fleet.fleet_id!r}", "fleet_id")
        return fleet

    def list(self) -> list[FleetListing]:
        out = {}
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            name = path.name
            if name.startswith(".tmp-"):
                continue
            if name.endswith(".pending.json"):
                fid = name[: -len(".pending.json")]
                if not (self._stale(self._marker(path)) and not self.read_only) and fid not in out:
                    out[fid] = FleetListing(fid, "pending")
                continue
            fid = name[: -len(".json")]
            try:
                out[fid] = FleetListing(fid, "ready", fleet=self.get(fid))
            except (FleetCorruptError, FleetNotFoundError) as err:
                out[fid] = FleetListing(fid, "corrupt", error=str(err))
            except FleetError as err:  # an invalid fleet id as file name
                out[fid] = FleetListing(fid, "corrupt", error=str(err))
        return [out[k] for k in sorted(out)]

    def delete(self, fleet_id: str) -> None:
        """Unpublish the fleet (atomic), then delete its chips; a crash in between is finished by
        the next writer's :meth:`recover`."""
        self._check_writable()
        fleet = self.get(fleet_id)
        ids = [c.chip_id for c in fleet.chips]
        self.begin(fleet_id, "delete", ids)
        # No try/finally: if a chip cannot be deleted, the marker stays and the next writer's
        # recover() finishes the job (the fleet is already unpublished either way).
        self.manifest_path(fleet_id).unlink()
        _fsync_dir(self.dir)
        self.delete_chips(fleet_id, ids)
        self.end(fleet_id)

    def orphans(self) -> list[str]:
        """Chips tagged with a fleet that is neither published nor being written."""
        out = []
        for listing in self.store.list():
            tag = (listing.manifest or {}).get("meta", {}).get("fleet")
            if isinstance(tag, dict) and isinstance(tag.get("id"), str):
                try:
                    known = self.exists(tag["id"])
                except FleetError:
                    known = False
                if not known:
                    out.append(listing.chip_id)
        return out
