"""Chip profiles: which device, which periphery, which non-idealities, how strong.

A profile is a typed, validated, immutable object. Every one of the six perturbation
classes of DESIGN §3.3 has its own switch (a scale or probability; 0 turns it off):

1. read noise: ``read_noise_scale`` (1/f, per read-out) and ``w_noise`` (per MVM)
2. variability: ``prog_noise_scale`` (programming noise) and ``d2d_sigma`` (device gain)
3. drift: ``drift_scale``
4. stuck-at faults: ``p_stuck_reset``, ``p_stuck_set``
5. IR drop: ``ir_drop``
6. ADC/DAC: ``in_clip``, ``in_levels``, ``out_levels``, ``out_bound``, ``out_noise``
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from chipsim.devices import DEVICES, get_device
from chipsim.modes import GdcMode  # re-exported: older imports read it from here


class ProfileError(ValueError):
    """A profile name, field or value is not acceptable. ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class ChipProfile(BaseModel):
    """Everything that decides how a programmed chip behaves. Units in each description."""

    # use_enum_values: the stored profile keeps plain strings ("global"), as chips written before
    # chipsim.modes existed do; validation still goes through the enum.
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)

    name: str = Field("custom", description="Preset this profile was derived from.", max_length=64)
    device: str = Field("pcm", description=f"Device model, one of {sorted(DEVICES)}.")
    tile_rows: int = Field(512, ge=1, le=4096, description="Maximal rows (inputs) per crossbar tile.")
    # 2. variability
    prog_noise_scale: float = Field(
        1.0, ge=0, le=10, description="Multiplier of the programming-noise σ (1 = published)."
    )
    d2d_sigma: float = Field(0.0, ge=0, le=1, description="Static device-to-device gain variation σ (relative).")
    # 3. drift
    drift_scale: float = Field(1.0, ge=0, le=10, description="Multiplier of each device's drift exponent ν.")
    # 1. read noise
    read_noise_scale: float = Field(1.0, ge=0, le=10, description="Multiplier of the accumulated 1/f read noise.")
    w_noise: float = Field(0.0175, ge=0, le=1, description="Per-MVM weight read noise (normalised weight units).")
    # 4. stuck-at faults
    p_stuck_reset: float = Field(0.0, ge=0, le=1, description="Probability a device is stuck at 0 µS (RESET).")
    p_stuck_set: float = Field(0.0, ge=0, le=1, description="Probability a device is stuck at g_max (SET).")
    # 5. IR drop
    ir_drop: float = Field(1.0, ge=0, le=100, description="Scale of the IR-drop model (0 = off, 1 = standard).")
    # 6. DAC / ADC
    in_clip: bool = Field(True, description="DAC clips inputs to ±input_range (False: an ideal, unbounded DAC).")
    in_levels: int = Field(254, ge=0, le=1 << 20, description="DAC steps over [−1, 1] (0 = ideal DAC).")
    out_levels: int = Field(
        254, ge=0, le=1 << 20, description="ADC steps over [−out_bound, out_bound] (0 = no quantisation)."
    )
    out_bound: float = Field(10.0, ge=0, le=1e6, description="ADC clipping bound, normalised units (0 = no clipping).")
    out_noise: float = Field(0.04, ge=0, le=10, description="Additive ADC output noise σ, normalised units.")
    # drift compensation
    gdc: GdcMode = Field(
        GdcMode.GLOBAL.value, description="Global drift compensation: per tile, per column, exact reference, or off."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device not in DEVICES:
            raise ValueError(f"unknown device {device!r}; known: {sorted(DEVICES)}")
        return device

    @model_validator(mode="after")
    def _check(self) -> ChipProfile:
        if self.p_stuck_reset + self.p_stuck_set > 1:
            raise ValueError("p_stuck_set: p_stuck_reset + p_stuck_set must not exceed 1")
        if self.out_levels > 0 and self.out_bound <= 0:
            raise ValueError(
                "out_levels: ADC quantisation needs a positive out_bound (its step is 2·out_bound/out_levels)"
            )
        return self

    @property
    def device_model(self):
        return get_device(self.device)


# Fault rates are assumptions, not measurements from one chip: "pcm" carries the order of
# magnitude of non-programmable devices reported for mature PCM arrays (~0.1 %), "pcm-faulty"
# that of an early test chip (a few %). 0 in "pcm-reference" reproduces the published model.
PRESETS: dict[str, dict[str, Any]] = {
    "ideal": dict(
        prog_noise_scale=0.0,
        drift_scale=0.0,
        read_noise_scale=0.0,
        w_noise=0.0,
        ir_drop=0.0,
        in_clip=False,
        in_levels=0,
        out_levels=0,
        out_bound=0.0,
        out_noise=0.0,
    ),
    "pcm-reference": dict(),
    "pcm": dict(p_stuck_reset=1e-3, p_stuck_set=1e-4),
    "pcm-faulty": dict(p_stuck_reset=0.02, p_stuck_set=0.005),
    "reram": dict(device="reram", p_stuck_reset=1e-3, p_stuck_set=1e-4),
}

DEFAULT_PROFILE = "pcm"


def _format_validation_error(err: ValidationError) -> ProfileError:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first.get("loc", ())) or None
    msg = first.get("msg", "invalid value")
    if field is None and ": " in msg:  # cross-field checks name their field first ("out_levels: …")
        head = msg.removeprefix("Value error, ").split(": ", 1)[0]
        if head in ChipProfile.model_fields:
            field, msg = head, msg.removeprefix("Value error, ").split(": ", 1)[1]
    if first.get("type") == "extra_forbidden":
        msg = f"unknown field; known fields: {sorted(ChipProfile.model_fields)}"
    return ProfileError(f"profile.{field}: {msg}" if field else f"profile: {msg}", field=field)


def get_profile(name: str = DEFAULT_PROFILE, **overrides: Any) -> ChipProfile:
    """A named preset, optionally with field overrides, validated as a whole."""
    if name not in PRESETS:
        raise ProfileError(f"profile.name: unknown preset {name!r}; known presets: {sorted(PRESETS)}", field="name")
    if "name" in overrides:
        raise ProfileError("profile.name: choose the preset by name, not as an override", field="name")
    try:
        return ChipProfile(name=name, **{**PRESETS[name], **overrides})
    except ValidationError as err:
        raise _format_validation_error(err) from None


def profile_from_dict(data: dict[str, Any]) -> ChipProfile:
    """A profile from its JSON form (as stored in a chip's manifest), validated."""
    try:
        return ChipProfile.model_validate(data)
    except ValidationError as err:
        raise _format_validation_error(err) from None
