"""The registry of served chips: load, program, publish, delete (DESIGN §4–5).

The registry is the only owner of mutable service state. Its dictionaries are guarded by one
lock held only for dictionary operations, never during programming, loading or inference, so
programming a chip (seconds) never blocks inference on the others. A chip enters the registry
only after the store has published it atomically and its runtime is built: a half-programmed
chip is never visible. A chip leaves it only after the store deleted it: when storage fails the
chip stays, intact and served. Deletes of one chip id are serialized. Chips themselves are
immutable (ages are read-outs), so requests that hold a chip keep working even if it is deleted
meanwhile. A read-only replica (``AGEDCHIP_READ_ONLY``) opens the store read-only, refuses every
mutation with :class:`~service.problems.ReadOnly` and follows the writer by
:meth:`Registry.relist`. The cost of programming (tiles, devices) is bounded before any work
(:mod:`service.program_inputs`). Errors are :mod:`service.problems`.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chipsim import (
    ChipCorruptError,
    ChipExistsError,
    ChipNotFoundError,
    ChipState,
    ChipStore,
)
from chipsim.compiler import program_onnx
from chipsim.compiler.bounds import AllocationError
from chipsim.store import ChipListing, ChipStoreError
from service.chip_evaluation import EVAL_ATTACHMENT
from service.chip_listing import chip_sizes, corrupt_entry, listing_signature, ready_entry
from service.datasets import EvalSet, calibration_feeds, load_npz
from service.ids import check_chip_id as _chip_id
from service.keyed_locks import KeyedLocks
from service.memory import MemoryGuard
from service.problems import Conflict, InvalidField, NotFound, ReadOnly, invalid_value, storage_problem
from service.program_inputs import ProgramInputs
from service.program_request import ProgramSpec
from service.served_chip import ServedChip
from service.settings import Settings
from service.zoo import Zoo

log = logging.getLogger("agedchip.service")


class Registry:
    """All chips of the store, loaded; thread-safe."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.read_only = settings.read_only
        # Raises StoreLockedError when another process writes the folder (service.__main__ says so).
        self.store = ChipStore(settings.state_dir, read_only=settings.read_only)
        self.zoo = Zoo(settings.zoo_dir)
        #: The checks of a program request before any work (shared with service.fleets).
        self.inputs = ProgramInputs(settings, self.zoo)
        self._lock = threading.Lock()
        self._chips: dict[str, ServedChip] = {}
        self._corrupt: dict[str, str] = {}
        self._pending: set[str] = set()
        self._deleting = KeyedLocks()
        # What each chip was loaded from (its manifest's checksum, or the listing's error for a
        # corrupt one): a replica's relist reloads a chip only when this changed.
        self._signatures: dict[str, str] = {}
        self.memory = MemoryGuard(settings.memory_budget, relieve=self.relieve_memory)
        self.loaded = False
        #: The fleet a chip belongs to, if any (set by service.fleets): such a chip is deleted with its fleet.
        self.owner_of: Callable[[str], str | None] = lambda chip_id: None

    def _served(self, chip: ChipState, eval_set: EvalSet | None = None) -> ServedChip:
        sizes = chip_sizes(self.store, chip.chip_id)
        return ServedChip(chip, self.settings, *sizes, eval_set=eval_set, memory=self.memory)

    def close(self) -> None:
        """Release the store (the writer's lock) at shutdown; the chips in memory still serve."""
        self.store.close()

    def require_writer(self, action: str, allow: tuple[str, ...] = ()) -> None:
        """ReadOnly when this service is a read-only replica."""
        if self.read_only:
            raise ReadOnly(action, allow)

    def relieve_memory(self) -> None:
        """Drop what can be rebuilt when memory is short: every chip's evaluation runtime (its
        read-out cache and session; rebuilt on the next evaluation) and every chip's cached
        serving read-outs but its newest (rebuilt on the next request at that age), then
        collect garbage."""
        chips = self.ready()
        dropped = sum(chip.drop_eval_runtime() for chip in chips)
        freed = sum(chip.evict_readouts(keep=1) for chip in chips)
        gc.collect()
        log.info(
            "memory budget reached: dropped %d evaluation runtime(s) and %d MiB of cached read-outs",
            dropped,
            freed >> 20,
        )

    # ------------------------------------------------------------------ queries
    def get(self, chip_id: str) -> ServedChip:
        """A ready chip; InvalidField for a malformed id, NotFound, Conflict for a corrupt chip."""
        _chip_id(chip_id)
        with self._lock:
            chip = self._chips.get(chip_id)
            if chip is not None:
                return chip
            if chip_id in self._corrupt:
                raise Conflict(
                    "chip_id", f"chip_id: chip {chip_id!r} is corrupt and cannot serve: {self._corrupt[chip_id]}"
                )
            if chip_id in self._pending:
                raise NotFound("chip_id", f"chip_id: chip {chip_id!r} is still being programmed")
        raise NotFound("chip_id", f"chip_id: no chip {chip_id!r}")

    def ready(self) -> list[ServedChip]:
        with self._lock:
            return list(self._chips.values())

    def corrupt(self) -> dict[str, str]:
        with self._lock:
            return dict(self._corrupt)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {"ready": len(self._chips), "corrupt": len(self._corrupt)}

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            chips, corrupt = list(self._chips.values()), dict(self._corrupt)
        out = [ready_entry(c) for c in chips] + [corrupt_entry(chip_id, err) for chip_id, err in corrupt.items()]
        return sorted(out, key=lambda e: e["chip_id"])

    # ------------------------------------------------------------------ loading
    def load_all(self) -> None:
        """(Re)load every chip of the store; unreadable ones are listed as corrupt."""
        for listing in self.store.list(verify=False):
            self._load_listed(listing)
        self.loaded = True
        log.info("loaded %d chip(s), %d corrupt", *self.counts().values())

    def _load_listed(self, listing: ChipListing) -> None:
        """Load (or mark corrupt) one chip of a store listing."""
        chip_id = listing.chip_id
        signature = listing_signature(listing)
        if listing.status != "ready":
            self._mark_corrupt(chip_id, listing.error or "unreadable", signature)
            return
        try:
            chip = self.store.load(chip_id)
            served = self._served(chip)
        except ChipNotFoundError:  # deleted (by the writer of a replica's folder) since the listing
            self._forget(chip_id)
            return
        except ChipCorruptError as err:
            self._mark_corrupt(chip_id, str(err), signature)
            return
        except Exception as err:  # a chip this build cannot run is listed, not fatal
            log.exception("chip %s could not be loaded", chip_id)
            self._mark_corrupt(chip_id, f"cannot be loaded: {type(err).__name__}: {str(err)[:300]}", signature)
            return
        with self._lock:
            self._chips[chip_id] = served
            self._corrupt.pop(chip_id, None)
            self._signatures[chip_id] = signature

    def load(self, chip_id: str) -> None:
        """Load (or reload) one chip the store published behind the registry (a fleet's); unreadable:
        corrupt."""
        try:
            listing = ChipListing(chip_id, "ready", manifest=self.store.read_manifest(chip_id))
        except ChipNotFoundError:
            self._forget(chip_id)
            return
        except (ChipStoreError, ValueError) as err:
            listing = ChipListing(chip_id, "corrupt", error=str(err))
        self._load_listed(listing)

    def _forget(self, chip_id: str) -> None:
        with self._lock:
            self._chips.pop(chip_id, None)
            self._corrupt.pop(chip_id, None)
            self._signatures.pop(chip_id, None)

    def relist(self) -> tuple[int, int]:
        """Follow the store's writer (a read-only replica): load chips that appeared or changed
        (deleted and programmed again under the same id), forget the ones deleted. Requests that
        hold a forgotten chip finish on it. Returns (chips loaded, chips forgotten). Blocking."""
        listings = {listing.chip_id: listing for listing in self.store.list(verify=False)}
        with self._lock:
            known = dict(self._signatures)
        gone = [chip_id for chip_id in known if chip_id not in listings]
        for chip_id in gone:
            self._forget(chip_id)
        changed = [listing for chip_id, listing in listings.items() if known.get(chip_id) != listing_signature(listing)]
        for listing in changed:
            self._load_listed(listing)
        if gone or changed:
            log.info("relisted the store: %d chip(s) loaded or reloaded, %d forgotten", len(changed), len(gone))
        return len(changed), len(gone)

    def _mark_corrupt(self, chip_id: str, error: str, signature: str | None = None) -> None:
        log.warning("chip %s is corrupt: %s", chip_id, error)
        with self._lock:
            self._chips.pop(chip_id, None)
            self._corrupt[chip_id] = error
            self._signatures[chip_id] = signature or "corrupt:" + error

    # ------------------------------------------------------------------ programming
    def _reserve(self, chip_id: str | None, hint: str, field_name: str = "chip_id") -> str:
        """Reserve ``chip_id`` (or a fresh '<hint>-<hex>'); errors name ``field_name``."""
        with self._lock:
            if chip_id is None:
                base = re.sub(r"[^a-z0-9_-]+", "-", hint.lower()).strip("-_")[:40] or "chip"
                if not base[0].isalnum():
                    base = "chip-" + base
                while True:
                    chip_id = f"{base}-{secrets.token_hex(4)}"
                    if chip_id not in self._chips and chip_id not in self._corrupt and chip_id not in self._pending:
                        break
            else:
                _chip_id(chip_id, field_name)
                if (
                    chip_id in self._chips
                    or chip_id in self._corrupt
                    or chip_id in self._pending
                    or self.store.exists(chip_id)
                ):
                    raise Conflict(
                        field_name,
                        f"{field_name}: chip {chip_id!r} already exists (chips are immutable; "
                        "delete it or choose another id)",
                    )
            n = len(self._chips) + len(self._corrupt) + len(self._pending)
            if n >= self.settings.max_chips:
                raise Conflict(
                    field_name,
                    f"{field_name}: the store holds the maximum of {self.settings.max_chips} "
                    "chips (AGEDCHIP_MAX_CHIPS); delete one first",
                )
            self._pending.add(chip_id)
            return chip_id

    def dry_run(self, spec: ProgramSpec) -> dict[str, Any]:
        """What programming the request would do, as JSON; nothing is programmed or stored
        (:meth:`ProgramInputs.dry_run`). Blocking: call from a worker thread."""
        return self.inputs.dry_run(spec)

    def program(self, spec: ProgramSpec) -> ServedChip:
        """Compile, program, publish and load a chip. Blocking: call from a worker thread.

        Everything the request carries is validated before the chip is programmed, the eval set
        against the inputs the model declares, and the chip's size against the limits."""
        self.require_writer("program chips")
        inputs = self.inputs
        inputs.check_source(spec)
        profile = inputs.profile(spec)
        model_bytes, eval_bytes = inputs.model_bytes(spec)
        inputs.check_cost(model_bytes, profile, tile_rows_given="tile_rows" in spec.overrides)
        seed = spec.seed if spec.seed is not None else secrets.randbits(31)
        hint = spec.zoo_model or Path(spec.model_filename or "chip").stem
        chip_id = self._reserve(spec.chip_id, hint)
        try:
            calib = None
            if spec.calibration is not None:
                calib = calibration_feeds(load_npz(spec.calibration, "calibration"))
            eval_set = inputs.eval_set(model_bytes, eval_bytes) if eval_bytes is not None else None
            meta = {
                "time_scale": spec.time_scale,
                "model_name": spec.zoo_model or (spec.model_filename or "upload")[:64],
                "model_source": "zoo" if spec.zoo_model else "upload",
                "profile_preset": spec.preset,
                "profile_overrides": spec.overrides,
                "service": "agedchip",
            }
            t0 = time.perf_counter()
            try:
                chip = program_onnx(
                    model_bytes,
                    profile,
                    seed,
                    chip_id=chip_id,
                    calibration=calib,
                    meta=meta,
                    eval_inputs=eval_set.feeds if eval_set is not None else None,
                    limits=inputs.allocation_limits(),
                )
            except AllocationError as err:
                setting = {"tensor": "AGEDCHIP_MAX_TENSOR_ELEMENTS", "total": "AGEDCHIP_MAX_GRAPH_ELEMENTS"}[err.limit]
                raise InvalidField("model", f"{err} ({setting}, at batch AGEDCHIP_MAX_BATCH)") from None
            except ValueError as err:  # CompileError, or layer validation in chipsim.program
                raise invalid_value(err, default_field="model") from None
            if eval_bytes is not None:
                chip = dataclasses.replace(chip, attachments={**chip.attachments, EVAL_ATTACHMENT: eval_bytes})
            self._save(chip)
            served = self._served(chip, eval_set=eval_set)
            log.info(
                "programmed chip %s (%s, %s, seed %d) in %.2f s",
                chip_id,
                meta["model_name"],
                spec.preset,
                seed,
                time.perf_counter() - t0,
            )
            with self._lock:
                self._chips[chip_id] = served
            return served
        finally:
            with self._lock:
                self._pending.discard(chip_id)

    def _save(self, chip: ChipState) -> None:
        """Publish a chip in the store; storage failures are problems naming their cause."""
        try:
            self.store.save(chip)
        except ChipExistsError as err:
            raise Conflict("chip_id", str(err)) from None
        except (OSError, ChipStoreError) as err:
            log.warning("could not write chip %s: %s", chip.chip_id, err)
            raise storage_problem(err, f"cannot write chip {chip.chip_id!r}") from None

    # ------------------------------------------------------------------ derived chips (recalibration)
    def taken(self, chip_id: str) -> bool:
        """True if ``chip_id`` is a chip (ready, corrupt, being made, or on disk)."""
        with self._lock:
            if chip_id in self._chips or chip_id in self._corrupt or chip_id in self._pending:
                return True
        return self.store.exists(chip_id)

    def reserve(self, chip_id: str, field_name: str = "chip_id") -> str:
        """Reserve an id for a chip made outside :meth:`program` (Conflict if taken or the store is
        full; errors name ``field_name``); :meth:`publish` or :meth:`release` ends the reservation."""
        self.require_writer("create chips")
        return self._reserve(chip_id, chip_id, field_name)

    def release(self, chip_id: str) -> None:
        with self._lock:
            self._pending.discard(chip_id)

    def publish(self, chip: ChipState) -> ServedChip:
        """Save a chip made elsewhere (its id reserved) atomically, then serve it. Blocking.

        Nothing is visible before the store's atomic rename; the reservation ends either way."""
        try:
            self._save(chip)
            served = self._served(chip)
            with self._lock:
                self._chips[chip.chip_id] = served
            return served
        finally:
            self.release(chip.chip_id)

    # ------------------------------------------------------------------ deleting
    def delete(self, chip_id: str) -> None:
        """Delete a chip: from the store first, then from memory, so that a storage failure
        leaves it intact and served (StorageFull or Unavailable). Deletes of one id run one at a
        time: the first succeeds, the others find no chip."""
        self.require_writer("delete chips", allow=("GET",))
        _chip_id(chip_id)
        with self._deleting.hold(chip_id):
            with self._lock:
                if chip_id in self._pending:
                    raise Conflict("chip_id", f"chip_id: chip {chip_id!r} is being programmed")
                known = chip_id in self._chips or chip_id in self._corrupt
            fleet = self.owner_of(chip_id)
            if fleet is not None:  # a fleet is whole or absent: its chips go with it
                raise Conflict(
                    "chip_id",
                    f"chip_id: chip {chip_id!r} belongs to fleet {fleet!r}; DELETE "
                    f"/fleets/{fleet} deletes the fleet with its chips",
                )
            try:
                self.store.delete(chip_id)
            except ChipNotFoundError:
                if not known:
                    raise NotFound("chip_id", f"chip_id: no chip {chip_id!r}") from None
                # gone from disk behind the service's back: forget it as well
            except (OSError, ChipStoreError) as err:
                log.warning("could not delete chip %s: %s", chip_id, err)
                raise storage_problem(err, f"cannot delete chip {chip_id!r}") from None
            self._forget(chip_id)
