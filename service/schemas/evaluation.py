"""Evaluation and drift: POST /chips/{id}/evaluate (accuracy against age, SLO breach) and GET
/chips/{id}/drift."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from chipsim.fleet import SloSpec
from service.schemas.common import AGE_DOC, GDC_ON_MODES, AgeValue


class EvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ages: list[AgeValue] = Field(min_length=1, max_length=20, description="1-20 ages. " + AGE_DOC)
    readouts: int = Field(
        5,
        ge=1,
        description="Read-outs (read seeds 0…n−1) per age; mean ± std over them. "
        "At most AGEDCHIP_MAX_EVAL_READOUTS (default 50).",
    )
    samples: int | None = Field(None, ge=1, description="Use only the first n eval samples (default: all).")
    gdc_mode: Literal[GDC_ON_MODES] | None = Field(  # type: ignore[valid-type]
        None, description="GDC mode for the 'GDC on' numbers (default: the profile's, or global)."
    )
    slo: SloSpec | None = Field(
        None,
        description="Accuracy SLO {metric: accuracy | normalised_accuracy, threshold "
        "(ratio)}: the response adds the time to SLO breach.",
    )


class AccuracyStats(BaseModel):
    mean: float = Field(description="Mean accuracy over read-outs (ratio).")
    std: float = Field(description="Standard deviation over read-outs (ratio, population).")
    min: float = Field(description="Lowest accuracy over read-outs (ratio).")
    max: float = Field(description="Highest accuracy over read-outs (ratio).")
    values: list[float] = Field(description="Accuracy of each read-out (read seed 0…n−1), ratios.")


class AgeAccuracy(BaseModel):
    age: str = Field(description="The age as requested.")
    age_s: float = Field(description="Age in seconds.")
    gdc_on: AccuracyStats = Field(description="Accuracy with global drift compensation (mode `gdc_mode`).")
    gdc_off: AccuracyStats = Field(description="Accuracy without drift compensation.")


class SloBreach(BaseModel):
    status: Literal["breached", "breached_at_first", "not_breached"] = Field(
        description="'breached': crossed between two evaluated ages (interpolated on log-age); 'breached_at_first': "
        "already below at the first age > 0; 'not_breached': still meets it at the last age."
    )
    age_s: float | None = Field(description="Interpolated chip age of the breach, seconds; null when censored.")
    bracket_s: list[float | None] = Field(
        description="[low, high] chip ages in seconds between which the breach "
        "lies (the evaluated ages around it); high null = never "
        "within the evaluated ages."
    )
    seconds_until: float | None = Field(
        description="Wall-clock seconds from now until the breach at the chip's "
        "time scale (0: already breached; null: not predicted, or "
        "the chip does not age)."
    )


class EvaluateResponse(BaseModel):
    chip_id: str = Field(description="Chip evaluated.")
    samples: int = Field(description="Eval samples used.")
    readouts: int = Field(description="Read-outs per age (read seeds 0…n−1).")
    gdc_mode: str = Field(description="GDC mode of the 'on' numbers.")
    results: list[AgeAccuracy] = Field(description="One entry per requested age, in request order.")
    slo: SloSpec | None = Field(None, description="The SLO of the request (only with one).")
    fp_accuracy: float | None = Field(
        None,
        description="Floating-point model's accuracy on the samples used (ratio); set for the normalised_accuracy SLO.",
    )
    breach: dict[str, SloBreach] | None = Field(
        None, description="Time to SLO breach, 'gdc_on' and 'gdc_off' (only with an SLO)."
    )
    chip_age_s: float | None = Field(
        None,
        description="The chip's wall-clock age when evaluated, seconds "
        "(the origin of `seconds_until`; only with an SLO).",
    )
    seconds: float = Field(description="Wall time of the evaluation, seconds.")


# ----------------------------------------------------------------------------------- drift
class DriftLayer(BaseModel):
    name: str = Field(description="Analog layer (ONNX node) name.")
    rows: int = Field(description="Inputs of the crossbar matrix (count).")
    cols: int = Field(description="Outputs of the crossbar matrix (count).")
    tiles: int = Field(description="Crossbar tiles (count).")
    devices: int = Field(description="Physical devices (2 per weight).")
    alpha_mean: float = Field(description="GDC α, mean over tiles (dimensionless).")
    alpha_per_tile: list[float] = Field(description="GDC α of each tile (dimensionless).")
    g_ratio: float = Field(description="ΣG(t)/ΣG_prog over the layer's devices (ratio).")
    weight_error: float = Field(description="‖W(t)−W‖/‖W‖ without GDC (ratio).")
    weight_error_gdc: float = Field(description="‖α·W(t)−W‖/‖W‖ with GDC (ratio).")
    stuck_reset: int = Field(description="Devices of the layer stuck at 0 µS.")
    stuck_set: int = Field(description="Devices of the layer stuck at g_max.")
    mean_nu: float = Field(description="Mean drift exponent ν of healthy devices (dimensionless).")


class DriftResponse(BaseModel):
    chip_id: str = Field(description="Chip measured.")
    age_s: float = Field(description="Age of the read-out, seconds.")
    read_seed: int = Field(description="Read-out seed (1/f noise draw).")
    gdc: str = Field(description="GDC mode of the 'with GDC' numbers.")
    layers: list[DriftLayer] = Field(description="Per analog layer, in graph order.")
    weight_error: float = Field(description="Chip-wide ‖W(t)−W‖/‖W‖ without GDC (ratio).")
    weight_error_gdc: float = Field(description="Chip-wide relative weight error with GDC (ratio).")
    g_ratio: float = Field(description="Chip-wide ΣG(t)/ΣG_prog (ratio).")
    stuck_reset: int = Field(description="Devices stuck at 0 µS.")
    stuck_set: int = Field(description="Devices stuck at g_max.")
    stuck_fraction: float = Field(description="Stuck devices / devices (ratio).")
    mean_nu: float = Field(description="Mean drift exponent ν of healthy devices (dimensionless).")
