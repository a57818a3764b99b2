"""Inference: POST /infer's request and response."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.common import AGE_DOC, ESTIMATE_DOC, GDC_DOC, AgeValue, GdcOption


class InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    chip_id: str = Field(
        description="Chip to run on (GET /chips lists them; the chip programmed at first start is 'default')."
    )
    inputs: list[Any] | dict[str, Any] = Field(
        description="A nested list (batch first) for a single-input model, or an object input name → nested "
        "list. Numbers in the model's input units; finite."
    )
    age: AgeValue | None = Field(None, description=AGE_DOC + " Omitted: the chip's wall-clock age × its time scale.")
    gdc: GdcOption = Field(True, description=GDC_DOC)
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Seed of the per-MVM noise: the same request with "
        "the same seed gives identical outputs. Omitted: "
        "fresh noise.",
    )
    read_seed: int = Field(0, ge=0, le=2**63 - 1, description="Selects the read-out (1/f noise draw) at the age.")
    labels: list[int] | None = Field(
        None,
        description="True class per batch item (classifiers): updates the chip's "
        "live accuracy; the response reports the batch's accuracy.",
    )


class LayerAlpha(BaseModel):
    layer: str = Field(description="Analog layer name.")
    alpha_mean: float = Field(description="GDC factor α, mean over tiles (and columns), dimensionless.")
    alpha_min: float = Field(description="Smallest α over tiles (dimensionless).")
    alpha_max: float = Field(description="Largest α over tiles (dimensionless).")
    tiles: int = Field(description="Crossbar tiles of the layer (count).")


class InferResponse(BaseModel):
    chip_id: str = Field(description="Chip that ran the inference.")
    age_s: float = Field(description="Effective chip age of this inference, seconds.")
    age_source: Literal["request", "wall_clock"] = Field(
        description="Whether the age came from the request or from the wall clock × time scale."
    )
    gdc: str = Field(description="GDC mode applied (global, column, exact, off).")
    gdc_applied: bool = Field(description="False when GDC was off (α reported but not applied).")
    read_seed: int = Field(description="Read-out seed used (selects the 1/f noise draw at the age).")
    seed: int | None = Field(description="Per-MVM noise seed used (null: fresh noise).")
    batch: int = Field(description="Batch size (samples).")
    outputs: dict[str, list[Any]] = Field(description="Output name → nested list, in the model's output units.")
    argmax: list[int] | None = Field(None, description="Predicted class per sample (classifiers only).")
    accuracy: float | None = Field(None, description="Accuracy of this batch against `labels` (ratio).")
    alpha: list[LayerAlpha] = Field(description="GDC α per analog layer at this age and read-out.")
    energy_j: float = Field(
        description=ESTIMATE_DOC + "Energy of this request (all `batch` samples), joules: "
        "GET /chips/{chip_id} `cost.per_sample.energy_j` × batch."
    )
    latency_s: float = Field(
        description=ESTIMATE_DOC + "Latency of this request on the chip, seconds (samples one "
        "after the other), not the service's response time."
    )
    cost_model: str = Field(description="The cost model behind `energy_j` and `latency_s` (an estimate).")
