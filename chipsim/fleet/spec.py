"""Typed, validated requests of the fleet domain: a fleet, its evaluation and its SLO.

A **fleet** is one model on one profile, manufactured ``n_chips`` times: N chips whose
programming seeds derive from one fleet seed (:func:`chip_seed`). Chip ``i`` is stored as an
ordinary chip named ``<fleet_id>-<i:03d>``, so every chip route works on it too.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chipsim.ages import MAX_AGE_S
from chipsim.fleet.errors import FleetError
from chipsim.modes import GdcMode, SloMetric
from chipsim.profiles import ChipProfile, ProfileError, get_profile
from chipsim.rng import MAX_SEED
from chipsim.state import check_chip_id

#: At most this many chips per fleet: chip ids keep three digits (``<fleet>-000`` … ``-999``).
MAX_FLEET_CHIPS = 1000
#: A chip id is at most 63 characters (chipsim.programming.CHIP_ID_RE); "-NNN" takes 4 of them.
MAX_FLEET_ID_CHARS = 59
#: Ages and read-outs per evaluation, as ``POST /chips/{id}/evaluate`` allows (1-20 ages).
MAX_EVAL_AGES = 20
MAX_EVAL_READOUTS = 100
#: Version tag mixed into the seed derivation; a new derivation gets a new tag, never a silent change.
SEED_DERIVATION = "agedchip-fleet-v1"


def chip_seed(fleet_seed: int, index: int) -> int:
    """Programming seed of chip ``index`` of a fleet.

    ``seed_i = int.from_bytes(sha256(f"agedchip-fleet-v1:{fleet_seed}:{index}")[:8], "big") >> 1``
    (63 bits, chipsim's seed range). A hash rather than ``fleet_seed + i``: with an offset, fleet
    seed 0's chip 1 would be fleet seed 1's chip 0, so two fleets would share chips. chipsim feeds
    the seed to numpy's ``SeedSequence`` with a stream key per quantity, so distinct seeds give
    independent programming noise, ν and faults.
    """
    digest = hashlib.sha256(f"{SEED_DERIVATION}:{int(fleet_seed)}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def fleet_chip_id(fleet_id: str, index: int) -> str:
    return f"{fleet_id}-{index:03d}"


def check_fleet_id(fleet_id: str) -> str:
    """A valid fleet id (a chip id of at most 59 characters), else :class:`FleetError`."""
    ok = isinstance(fleet_id, str) and len(fleet_id) <= MAX_FLEET_ID_CHARS
    try:
        ok = ok and bool(check_chip_id(fleet_id))
    except ValueError:
        ok = False
    if not ok:
        raise FleetError(
            f"fleet_id: {fleet_id!r} is not a valid fleet id (1-{MAX_FLEET_ID_CHARS} characters: "
            "lowercase letters, digits, '-', '_'; starting with a letter or digit)",
            "fleet_id",
        )
    return fleet_id


def _first_error(err: ValidationError) -> tuple[str, str]:
    e = err.errors()[0]
    where = ".".join(str(p) for p in e.get("loc", ())) or None
    return f"{where}: {e.get('msg')}" if where else str(e.get("msg")), where or ""


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, data: dict[str, Any]):
        """Validate a plain dict; raises :class:`FleetError` naming the first bad field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            msg, where = _first_error(err)
            raise FleetError(msg, where or None) from None


class FleetSpec(_Spec):
    """What to manufacture. The model itself (ONNX bytes) and its eval set travel beside it."""

    fleet_id: str = Field(description="1-59 of a-z 0-9 - _; chips are named <fleet_id>-000 …")
    model_name: str = Field("model", min_length=1, max_length=64, description="Label of the model (zoo name or file).")
    preset: str = Field("pcm", description="Chip profile preset (chipsim.profiles.PRESETS).")
    overrides: dict[str, Any] = Field(default_factory=dict, description="Profile fields that differ from the preset.")
    n_chips: int = Field(ge=1, le=MAX_FLEET_CHIPS, description="Chips to program.")
    seed: int = Field(ge=0, le=MAX_SEED, description="Fleet seed; chip seeds derive from it (chip_seed).")
    time_scale: float = Field(1.0, ge=0, le=1e12, description="Chip seconds per wall-clock second, each chip.")

    @field_validator("fleet_id")
    @classmethod
    def _check_id(cls, v: str) -> str:
        try:
            return check_fleet_id(v)
        except FleetError as err:
            raise ValueError(str(err).removeprefix("fleet_id: ")) from None

    @field_validator("time_scale")
    @classmethod
    def _finite(cls, v: float) -> float:
        if not math.isfinite(v):
            raise ValueError("must be finite")
        return v

    def profile(self) -> ChipProfile:
        try:
            return get_profile(self.preset, **self.overrides)
        except ProfileError as err:
            raise FleetError(str(err), f"profile.{err.field}" if err.field else "profile") from None

    def chip_id(self, index: int) -> str:
        return fleet_chip_id(self.fleet_id, index)

    def chip_ids(self) -> list[str]:
        return [self.chip_id(i) for i in range(self.n_chips)]

    def chip_seeds(self) -> list[int]:
        return [chip_seed(self.seed, i) for i in range(self.n_chips)]


class SloSpec(_Spec):
    """The accuracy target a chip must meet: ``metric >= threshold``."""

    metric: SloMetric = Field(SloMetric.ACCURACY, description="accuracy, or normalised_accuracy (÷ FP accuracy).")
    threshold: float = Field(gt=0, le=2, description="Minimum of the metric (ratio; accuracy ≤ 1).")

    @model_validator(mode="after")
    def _range(self) -> SloSpec:
        if self.metric == SloMetric.ACCURACY and self.threshold > 1:
            raise ValueError("threshold: an accuracy threshold is a ratio in (0, 1]")
        return self


class FleetEvalSpec(_Spec):
    """Which chips × ages × read-outs to evaluate, and against which SLO."""

    ages_s: list[float] = Field(
        min_length=1,
        max_length=MAX_EVAL_AGES,
        description="Ages in seconds after programming, > 0 (log-age interpolation).",
    )
    readouts: int = Field(5, ge=1, le=MAX_EVAL_READOUTS, description="Read-outs per chip and age (read seeds 0…n−1).")
    slo: SloSpec
    gdc_mode: GdcMode | None = Field(None, description="Mode of the 'GDC on' numbers (default: the profile's).")
    samples: int | None = Field(None, ge=1, description="Use only the first n eval samples (default: all).")

    @field_validator("ages_s")
    @classmethod
    def _ages(cls, v: list[float]) -> list[float]:
        for i, a in enumerate(v):
            if not (math.isfinite(a) and 0 < a <= MAX_AGE_S):
                raise ValueError(
                    f"ages_s.{i}: {a!r} must be > 0 s and ≤ {MAX_AGE_S:g} s (1000 years); time to "
                    "breach interpolates on log-age, so use e.g. 1 s for a fresh chip"
                )
        if len(set(v)) != len(v):
            raise ValueError("ages must be distinct")
        return sorted(float(a) for a in v)

    @field_validator("gdc_mode")
    @classmethod
    def _on_mode(cls, v: GdcMode | None) -> GdcMode | None:
        if v == GdcMode.OFF:
            raise ValueError("the 'GDC on' mode cannot be 'off' (GDC off is always evaluated too)")
        return v
