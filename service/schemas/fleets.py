"""Fleets: POST /fleets and POST /fleets/{id}/evaluate (requests), the jobs' status, GET /fleets
and GET /fleets/{id}."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from chipsim.fleet import SloSpec
from service.schemas.common import AGE_DOC


class FleetProgramRequest(BaseModel):
    """POST /fleets: a zoo model programmed `n_chips` times, each chip with its own seed."""

    model_config = ConfigDict(extra="forbid")

    fleet_id: str = Field(
        description="Id of the fleet (1-59 of a-z, 0-9, '-', '_'); its chips are '<fleet_id>-000' … in GET /chips."
    )
    model: str = Field(
        description="Zoo model name (GET /zoo lists them); its eval set, if any, is stored with "
        "every chip (needed to evaluate the fleet)."
    )
    profile: str = Field(
        "pcm", description="Chip profile preset ('ideal', 'pcm-reference', 'pcm', 'pcm-faulty', 'reram')."
    )
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Profile fields to override, units as in the profile."
    )
    n_chips: int = Field(
        ge=1, le=1000, description="Chips to program (count); together with the other chips at most AGEDCHIP_MAX_CHIPS."
    )
    seed: int = Field(
        ge=0, le=2**63 - 1, description="Fleet seed; chip i's programming seed is derived from it (docs/fleets.md)."
    )
    time_scale: float = Field(1.0, ge=0, le=1e9, description="Chip seconds per wall-clock second, every chip.")


class FleetEvaluateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ages: list[int | float | str] = Field(min_length=1, max_length=20, description="1-20 distinct ages > 0. " + AGE_DOC)
    readouts: int = Field(
        5, ge=1, description="Read-outs per chip and age (read seeds 0…n−1); at most AGEDCHIP_MAX_EVAL_READOUTS."
    )
    slo: SloSpec = Field(description="The accuracy SLO yield and breach are judged on.")
    gdc_mode: Literal["global", "column", "exact"] | None = Field(
        None, description="GDC mode of the 'GDC on' numbers (default: the profile's)."
    )
    samples: int | None = Field(None, ge=1, description="Use only the first n eval samples (default: all).")


class FleetJobProgress(BaseModel):
    step: int = Field(description="Chips programmed, or evaluation tasks (chips) done (count).")
    steps: int = Field(description="Chips, or tasks, in total (count).")
    fraction: float = Field(description="step / steps, ratio in [0, 1].")


class FleetJobError(BaseModel):
    message: str = Field(description="Why the job failed or was cancelled.")
    field: str | None = Field(None, description="The request field at fault, if any.")


class FleetJobStatus(BaseModel):
    job_id: str = Field(description="Id of the job (GET /jobs/{job_id}; DELETE cancels it).")
    kind: Literal["fleet_program", "fleet_evaluate"] = Field(description="What the job does.")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] = Field(
        description="Where the job is; the last three are final."
    )
    fleet_id: str = Field(description="The fleet.")
    request: dict[str, Any] = Field(description="The request, validated (ages in seconds).")
    cancel_requested: bool = Field(description="True once DELETE /jobs/{job_id} asked it to stop.")
    progress: FleetJobProgress = Field(description="Work done so far.")
    created_at: float = Field(description="Submission time, Unix seconds.")
    started_at: float | None = Field(description="Start time, Unix seconds (null while queued).")
    finished_at: float | None = Field(description="End time, Unix seconds (null until final).")
    result: dict[str, Any] | None = Field(
        description="When succeeded: the fleet (fleet_program, as GET "
        "/fleets/{fleet_id}) or the evaluation report (fleet_evaluate: "
        "per age the accuracy distribution over chips, yield with its "
        "95 % Wilson interval, GDC on and off; time to breach per chip "
        "and fleet percentiles; docs/fleets.md). Ages in seconds, "
        "accuracies and yields ratios."
    )
    error: FleetJobError | None = Field(description="Set when the job failed (or why it was cancelled).")


class FleetChipInfo(BaseModel):
    index: int = Field(description="Position of the chip in the fleet (count from 0).")
    chip_id: str = Field(description="The chip's id (every chip route serves it).")
    seed: int = Field(description="The chip's programming seed, derived from the fleet seed.")
    digest: str = Field(description="sha256 of the chip's manifest when programmed.")


class FleetSummary(BaseModel):
    fleet_id: str = Field(description="Id of the fleet.")
    state: Literal["ready"] = Field(description="Only ready fleets have a summary.")
    model: dict[str, Any] = Field(description="'name' (zoo name) and 'digest' (sha256 of the ONNX file).")
    profile: dict[str, Any] = Field(description="'preset', 'overrides' and 'values' (every profile field).")
    n_chips: int = Field(description="Chips in the fleet (count).")
    seed: int = Field(description="Fleet seed.")
    time_scale: float = Field(description="Chip seconds per wall-clock second (ratio of seconds).")
    fp_accuracy: float | None = Field(description="The floating-point model's accuracy on the eval set (ratio).")
    eval_samples: int = Field(description="Samples of the eval set (0: none; the fleet cannot be evaluated).")
    created_at: float = Field(description="Publication time, Unix seconds.")
    programming_s: float = Field(description="Time programming took, seconds.")
    chips: list[FleetChipInfo] = Field(description="The chips, by index.")


class FleetListEntry(BaseModel):
    fleet_id: str = Field(description="Id of the fleet.")
    state: Literal["ready", "corrupt", "pending"] = Field(
        description="'ready', 'corrupt' (manifest unreadable or altered) or 'pending' (being programmed or deleted)."
    )
    model: str | None = Field(description="Model name (null unless ready).")
    n_chips: int | None = Field(description="Chips (count; null unless ready).")
    seed: int | None = Field(description="Fleet seed (null unless ready).")
    error: str | None = Field(description="Why a corrupt fleet cannot be used.")


class FleetList(BaseModel):
    fleets: list[FleetListEntry] = Field(description="Every fleet of the store, by id.")
