"""Energy and time per operation of an analog chip: the constants of the cost estimate.

A :class:`CostModel` prices the operations that :mod:`chipsim.cost.counts` finds in a compiled
model. Per tile MVM (one matrix–vector product on one crossbar tile)::

    E = e_tile_mvm_j + rows·cols·e_mac_j + rows·e_dac_j + cols·e_adc_j      (rows, cols programmed)
    t = t_tile_mvm_s                                                         (every tile of a layer in parallel)

and per digital operation ``e_digital_op_j`` and ``t_digital_op_s``. The models here are
*calibrated* on published measurements, not measured: every figure the estimate returns is an
estimate and labelled as such.

Calibration on IBM HERMES (Le Gallo et al., "A 64-core mixed-signal in-memory compute chip based
on phase-change memory for deep neural network inference", Nature Electronics 6, 680–693, 2023,
abstract): 64 cores of 256×256 weights, 8-bit input/output MVMs, 14 nm CMOS with PCM;

- one-phase read mode: 63.1 TOPS at 9.76 TOPS/W;
- four-phase read mode (inputs of each polarity applied to weights of each polarity in four
  modulation cycles, Extended Data Fig. 4): 16.1 TOPS at 2.48 TOPS/W.

With the field's convention of two operations per multiply–accumulate, one full core MVM is
``2·256² = 131072`` operations, so (:func:`hermes_anchor`):

- energy per core MVM = 131072 / (TOPS/W): 13.43 nJ (one-phase), 52.85 nJ (four-phase);
- time per core MVM = 64·131072 / TOPS with all 64 cores busy: 132.9 ns, 521.0 ns.

The two read modes split the energy (:func:`hermes_split`): ``E(P) = E₀ + P·E_phase`` for P
modulation phases gives E_phase = 13.14 nJ and E₀ = 0.29 nJ (0.24–0.33 nJ over the published
figures' rounding to three digits). Everything that runs for the duration of each phase — the
PWM input drivers, the current-controlled-oscillator ADCs, clocks and bias — scales with P; the
crossbar's own conduction does not (each device conducts once per MVM, for its input's
duration, in either mode), so we read E₀ as the crossbar's share. Hence:

- ``e_mac_j = E₀/256²`` = 4.4 fJ per programmed weight per MVM (E₀ may also hold per-MVM fixed
  costs such as the local digital unit's affine scaling; the two published points cannot
  separate them, so ``e_tile_mvm_j = 0``);
- ``P·E_phase`` is the row and column periphery of a full core: 256 DAC (PWM) and 256 ADC
  conversions. The published points constrain only their sum over a square core; the split is
  an **assumption** (:data:`HERMES_ADC_SHARE` = ½, i.e. equal energy per conversion), which
  matters only for layers whose inputs and outputs per tile differ a lot (docs/energy.md
  quantifies it).

Digital operations (everything outside the crossbars: activations, pooling, attention,
partial-sum accumulation over tiles, bias): HERMES does them in FP16 (its local and global
digital processing units are built of FP16 FMA units in the paper's architecture figure). Energy per FP16
operation from Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
at 45 nm: add 0.4 pJ, multiply 1.1 pJ, so 0.75 pJ per operation (an FMA counts two). Not scaled to
14 nm and without memory traffic: data movement is not modelled at all (docs/energy.md).
Throughput: **assumption** of one 256-lane FP16 unit at HERMES' 1 GHz main clock (Khaddam-Aljameh
et al., "HERMES-Core", IEEE JSSC 57(4), 2022: "at a main clock frequency of 1 GHz"), i.e.
3.9 ps per operation.

Cross-check, not used for calibration: Ambrogio et al., "An analog-AI chip for energy-efficient
speech recognition and transcription", Nature 620, 768–775 (2023) — 34 tiles of 512×512 weights,
same 14 nm PCM technology — reports up to 12.4 TOPS/W chip-sustained; the one-phase model gives
19 TOPS/W for a full 512×512 tile (tests/test_cost.py), the same order (that chip's figure is
sustained over a workload and includes its inter-tile routing, which this model ignores).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chipsim.cost.errors import CostError
from chipsim.profiles import ChipProfile

#: Operations per multiply–accumulate in published TOPS figures (multiply and add).
OPS_PER_MAC = 2

# --- IBM HERMES, Le Gallo et al., Nature Electronics 6, 680–693 (2023), abstract -----------------
HERMES_CORES = 64
HERMES_CORE_ROWS = 256
HERMES_CORE_COLS = 256
HERMES_BITS = 8  # "8-bit input/output matrix–vector multiplications"
#: Published peak throughput in TOPS, by read mode (number of modulation phases).
HERMES_TOPS: dict[int, float] = {1: 63.1, 4: 16.1}
#: Published energy efficiency in TOPS/W, by read mode.
HERMES_TOPS_PER_W: dict[int, float] = {1: 9.76, 4: 2.48}
#: Share of the phase-proportional periphery energy given to the ADCs (the rest to the DACs).
#: An assumption: the published figures fix only the sum over a square core (see module doc).
HERMES_ADC_SHARE = 0.5
#: HERMES main clock (Khaddam-Aljameh et al., IEEE JSSC 57(4), 2022), Hz.
HERMES_CLOCK_HZ = 1e9
#: Assumed FP16 lanes working on the digital part in parallel (one per core column).
DIGITAL_LANES = 256

# --- Horowitz, ISSCC 2014, 45 nm: FP16 add 0.4 pJ, FP16 multiply 1.1 pJ -------------------------
E_FP16_ADD_J = 0.4e-12
E_FP16_MUL_J = 1.1e-12

#: Upper bound on any one energy constant: catches a value given in pJ or nJ as if it were J.
_MAX_ENERGY_J = 1e-6
_MAX_TIME_S = 1e-3


class CostModel(BaseModel):
    """Energy (J) and time (s) per counted operation. Immutable and validated; every field's
    unit is in its name. See the module docstring for how the presets are derived."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(..., max_length=64, description="Preset name, e.g. 'hermes-1phase'.")
    description: str = Field("", max_length=500)
    e_tile_mvm_j: float = Field(..., ge=0, le=_MAX_ENERGY_J, description="Fixed energy per tile MVM, J.")
    e_mac_j: float = Field(
        ..., ge=0, le=_MAX_ENERGY_J, description="Energy per programmed weight per MVM (crossbar), J."
    )
    e_dac_j: float = Field(..., ge=0, le=_MAX_ENERGY_J, description="Energy per input (DAC) conversion, J.")
    e_adc_j: float = Field(..., ge=0, le=_MAX_ENERGY_J, description="Energy per output (ADC) conversion, J.")
    e_digital_op_j: float = Field(..., ge=0, le=_MAX_ENERGY_J, description="Energy per digital operation, J.")
    t_tile_mvm_s: float = Field(..., gt=0, le=_MAX_TIME_S, description="Time of one MVM on a tile, s.")
    t_digital_op_s: float = Field(
        ..., ge=0, le=_MAX_TIME_S, description="Time per digital operation (1/throughput), s."
    )
    converter_bits: int = Field(
        HERMES_BITS, ge=1, le=24, description="DAC/ADC resolution the constants were calibrated at."
    )
    sources: tuple[str, ...] = Field((), description="Where the constants come from.")

    def tile_mvm_energy_j(self, rows: int, cols: int) -> float:
        """Energy of one MVM on a tile with ``rows`` inputs and ``cols`` outputs programmed, J."""
        return self.e_tile_mvm_j + rows * cols * self.e_mac_j + rows * self.e_dac_j + cols * self.e_adc_j


def hermes_anchor(phases: int) -> tuple[float, float]:
    """Energy (J) and time (s) of one full 256×256 8-bit core MVM on HERMES in the read mode with
    ``phases`` modulation phases (1 or 4), from the published TOPS/W and TOPS."""
    if phases not in HERMES_TOPS:
        raise CostError(
            f"cost_model: HERMES was published in {sorted(HERMES_TOPS)}-phase read modes, not {phases}",
            field="cost_model",
        )
    ops = OPS_PER_MAC * HERMES_CORE_ROWS * HERMES_CORE_COLS
    return ops / (HERMES_TOPS_PER_W[phases] * 1e12), HERMES_CORES * ops / (HERMES_TOPS[phases] * 1e12)


def hermes_split() -> tuple[float, float]:
    """``(E₀, E_phase)`` in J with ``E(P) = E₀ + P·E_phase`` through the two published read modes."""
    e1, _ = hermes_anchor(1)
    e4, _ = hermes_anchor(4)
    e_phase = (e4 - e1) / 3.0
    return e1 - e_phase, e_phase


def hermes_cost_model(phases: int = 1, adc_share: float = HERMES_ADC_SHARE) -> CostModel:
    """The HERMES-calibrated cost model for a read mode (module docstring); ``adc_share`` is the
    share of the per-phase periphery energy charged to the ADCs (0…1, the rest to the DACs)."""
    if not (0.0 <= adc_share <= 1.0):
        raise CostError(f"cost_model: adc_share must lie in [0, 1], got {adc_share}", field="cost_model")
    e_mvm, t_mvm = hermes_anchor(phases)
    e0, _ = hermes_split()
    periphery = e_mvm - e0  # = phases·E_phase
    return CostModel(
        name=f"hermes-{phases}phase",
        description=(
            f"Estimate calibrated on IBM HERMES (14 nm PCM, 256x256 cores, 8-bit), {phases}-phase read mode: "
            f"{HERMES_TOPS[phases]} TOPS at {HERMES_TOPS_PER_W[phases]} TOPS/W published"
        ),
        e_tile_mvm_j=0.0,
        e_mac_j=e0 / (HERMES_CORE_ROWS * HERMES_CORE_COLS),
        e_dac_j=(1.0 - adc_share) * periphery / HERMES_CORE_ROWS,
        e_adc_j=adc_share * periphery / HERMES_CORE_COLS,
        e_digital_op_j=(E_FP16_ADD_J + E_FP16_MUL_J) / 2,
        t_tile_mvm_s=t_mvm,
        t_digital_op_s=1.0 / (DIGITAL_LANES * HERMES_CLOCK_HZ),
        converter_bits=HERMES_BITS,
        sources=(
            "Le Gallo et al., Nature Electronics 6, 680-693 (2023): 63.1/16.1 TOPS at 9.76/2.48 TOPS/W "
            "(one-/four-phase, 8-bit, 64 cores of 256x256)",
            "Horowitz, ISSCC 2014 (45 nm): FP16 add 0.4 pJ, multiply 1.1 pJ",
            "Khaddam-Aljameh et al., IEEE JSSC 57(4) 2022: 1 GHz main clock (digital throughput assumption)",
            f"assumptions: ADC share {adc_share} of the per-phase periphery energy; {DIGITAL_LANES} FP16 lanes",
        ),
    )


#: Named cost models.
COST_MODELS: dict[str, CostModel] = {m.name: m for m in (hermes_cost_model(1), hermes_cost_model(4))}
DEFAULT_COST_MODEL = "hermes-1phase"
#: Cost model per profile preset. Every preset emulates the same kind of 14 nm PCM chip with
#: 8-bit converters (``ideal`` only switches the non-idealities off in the emulation; the
#: hardware it would run on costs the same), so all use HERMES' one-phase mode.
PROFILE_COST_MODELS: dict[str, str] = {
    "ideal": DEFAULT_COST_MODEL,
    "pcm-reference": DEFAULT_COST_MODEL,
    "pcm": DEFAULT_COST_MODEL,
    "pcm-faulty": DEFAULT_COST_MODEL,
    "reram": DEFAULT_COST_MODEL,
}


def get_cost_model(name: str) -> CostModel:
    """A named cost model; :class:`CostError` (field ``cost_model``) lists the known ones."""
    try:
        return COST_MODELS[name]
    except (KeyError, TypeError):
        raise CostError(
            f"cost_model: unknown cost model {name!r}; known: {sorted(COST_MODELS)}", field="cost_model"
        ) from None


def cost_model_for(profile: ChipProfile, cost_model: CostModel | str | None = None) -> CostModel:
    """The cost model of a chip: ``cost_model`` when given (a model or a name), else the one
    of the chip's profile preset, else the default."""
    if isinstance(cost_model, CostModel):
        return cost_model
    if cost_model is not None:
        return get_cost_model(cost_model)
    return get_cost_model(PROFILE_COST_MODELS.get(profile.name, DEFAULT_COST_MODEL))


def converter_bits(levels: int) -> int | None:
    """Bits of a converter with ``levels`` steps over its range (``levels + 1`` codes:
    254 → 8); None for an ideal converter (0)."""
    return math.ceil(math.log2(levels + 1)) if levels > 0 else None


def profile_warnings(profile: ChipProfile, model: CostModel) -> list[str]:
    """Where the chip's profile differs from what the cost model was calibrated on."""
    out = []
    for what, levels in (("DAC", profile.in_levels), ("ADC", profile.out_levels)):
        bits = converter_bits(levels)
        if bits is None:
            out.append(
                f"the profile's {what} is ideal (no quantisation); its conversions are priced at "
                f"{model.converter_bits} bits"
            )
        elif bits != model.converter_bits:
            out.append(
                f"the profile's {what} has {bits} bits; conversions are priced at the calibration's "
                f"{model.converter_bits} bits (not rescaled)"
            )
    if profile.device != "pcm":
        out.append(
            f"device {profile.device!r}: the crossbar energy is calibrated on PCM; it is "
            f"{_array_share(model):.0%} of a full tile's MVM energy, so the estimate carries over roughly"
        )
    return out


def _array_share(model: CostModel) -> float:
    r, c = HERMES_CORE_ROWS, HERMES_CORE_COLS
    return r * c * model.e_mac_j / model.tile_mvm_energy_j(r, c)


def validate_cost_model(data: dict[str, Any]) -> CostModel:
    """A cost model from its JSON form; :class:`CostError` names the field."""
    try:
        return CostModel.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()))
        raise CostError(f"cost_model.{loc}: {first.get('msg', 'invalid value')}", field="cost_model") from None
