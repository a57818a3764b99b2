"""Program a fleet: N chips of one model, each with its own seed, published as one unit.

Every chip goes through chipsim's own ``program_onnx`` and ``ChipStore.save`` (atomic per chip);
the store keeps the model, the compiled graph, the eval set and the target weights once, as
content-addressed blobs that all chips of the fleet share. The fleet manifest is published last
(see chipsim.fleet.manifest for the rule that makes a fleet all-or-nothing).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from chipsim.compiler import CompileError, program_onnx
from chipsim.fleet.errors import FleetCancelled, FleetError, FleetExistsError
from chipsim.fleet.evalset import EVAL_ATTACHMENT, digital_accuracy, load_eval_set
from chipsim.fleet.manifest import Fleet, FleetChip, FleetStore, chip_digest
from chipsim.fleet.spec import FleetSpec
from chipsim.model_inputs import InputError
from chipsim.modes import WeightBinding
from chipsim.profiles import ChipProfile
from chipsim.runtime import ChipRuntime
from chipsim.state import ChipState
from chipsim.store import ChipExistsError, ChipStore

#: progress(done, total): called after each chip is published (and once with 0 at the start).
Progress = Callable[[int, int], None]
#: A threading.Event (set = cancel) or any callable returning True to cancel.
Cancel = threading.Event | Callable[[], bool]


def cancelled(cancel: Cancel | None) -> bool:
    if cancel is None:
        return False
    return cancel.is_set() if isinstance(cancel, threading.Event) else bool(cancel())


def _check_free(store: ChipStore, fleets: FleetStore, fid: str, ids: list[str]) -> None:
    """Raise :class:`FleetExistsError` if the fleet id or any of its chip ids is taken."""
    if fleets.exists(fid):
        raise FleetExistsError(f"fleet_id: fleet {fid!r} already exists or is being programmed", "fleet_id")
    taken = [c for c in ids if store.exists(c)]
    if taken:
        raise FleetExistsError(
            f"fleet_id: chip id {taken[0]!r} of fleet {fid!r} is taken by an existing chip; choose another fleet id",
            "fleet_id",
        )


def _program_chip(
    spec: FleetSpec,
    profile: ChipProfile,
    model_bytes: bytes,
    index: int,
    chip_id: str,
    seed: int,
    calibration: dict[str, np.ndarray] | np.ndarray | None,
    meta: dict[str, Any] | None,
) -> ChipState:
    """Program chip ``index`` of the fleet (not saved); compiler and layer errors become :class:`FleetError`."""
    chip_meta = {
        "model_name": spec.model_name,
        "profile_preset": spec.preset,
        "profile_overrides": spec.overrides,
        "time_scale": spec.time_scale,
        **(meta or {}),
        "fleet": {"id": spec.fleet_id, "index": index, "seed": spec.seed},
    }
    try:
        return program_onnx(model_bytes, profile, seed, chip_id=chip_id, calibration=calibration, meta=chip_meta)
    except CompileError as err:
        raise FleetError(str(err), getattr(err, "field", "model")) from None
    except ValueError as err:  # layer validation in chipsim.program
        raise FleetError(f"model: {err}", "model") from None


def program_fleet(
    store: ChipStore,
    spec: FleetSpec,
    model_bytes: bytes,
    eval_bytes: bytes | None = None,
    *,
    calibration: dict[str, np.ndarray] | np.ndarray | None = None,
    meta: dict[str, Any] | None = None,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
    fleets: FleetStore | None = None,
) -> Fleet:
    """Program ``spec.n_chips`` chips and publish the fleet. Blocking (seconds per chip).

    ``cancel`` is checked before each chip; a cancelled or failed run deletes the chips it made
    and raises (:class:`FleetCancelled`, :class:`FleetError`, or the original error); nothing is
    published. ``meta`` is added to every chip's metadata (e.g. the service's ``model_source``).
    """
    fleets = fleets or FleetStore(store)
    profile = spec.profile()
    fid = spec.fleet_id
    ids, seeds = spec.chip_ids(), spec.chip_seeds()
    _check_free(store, fleets, fid, ids)
    t0 = time.perf_counter()
    fleets.begin(fid, "program", ids)
    made: list[str] = []
    try:
        if progress:
            progress(0, spec.n_chips)
        chips: list[FleetChip] = []
        fp_accuracy, eval_samples = None, 0
        for i, (chip_id, seed) in enumerate(zip(ids, seeds)):
            if cancelled(cancel):
                raise FleetCancelled(f"fleet_id: programming fleet {fid!r} was cancelled after {i} chip(s)", "fleet_id")
            chip = _program_chip(spec, profile, model_bytes, i, chip_id, seed, calibration, meta)
            if eval_bytes is not None:
                if i == 0:  # the eval set is the same for every chip: check it once
                    fp_accuracy, eval_samples = _check_eval_set(chip, model_bytes, eval_bytes)
                chip.attachments[EVAL_ATTACHMENT] = eval_bytes
            try:
                store.save(chip)
            except ChipExistsError as err:
                raise FleetExistsError(f"fleet_id: {err}", "fleet_id") from None
            made.append(chip_id)
            chips.append(FleetChip(i, chip_id, seed, chip_digest(store.read_manifest(chip_id))))
            if progress:
                progress(i + 1, spec.n_chips)
        fleet = Fleet(
            spec=spec,
            chips=chips,
            model_digest=hashlib.sha256(model_bytes).hexdigest(),
            fp_accuracy=fp_accuracy,
            eval_samples=eval_samples,
            created_at=time.time(),
            programming_s=time.perf_counter() - t0,
            profile=profile.model_dump(mode="json"),
        )
        fleets.publish(fleet)
    except BaseException:
        fleets.delete_chips(fid, made)
        fleets.end(fid)
        raise
    fleets.end(fid)
    return fleet


def _check_eval_set(chip, model_bytes: bytes, eval_bytes: bytes) -> tuple[float, int]:
    """Validate the eval set against the compiled model; returns (FP accuracy, samples)."""
    rt = ChipRuntime(chip, threads=1, binding=WeightBinding.INPUTS, cache_entries=1)
    ev = load_eval_set(eval_bytes, [i["name"] for i in rt.inputs])
    try:
        rt.check_inputs({k: v[:2] for k, v in ev.feeds.items()})
    except InputError as err:
        raise FleetError(f"eval: {err}", "eval") from None
    if not (rt.outputs and len(rt.outputs[0]["shape"]) == 2):
        raise FleetError(
            "eval: the model is not a classifier (first output is not (batch, classes)); accuracy needs one", "eval"
        )
    return digital_accuracy(model_bytes, ev), len(ev)
