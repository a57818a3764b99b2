"""On-chip recalibration as a background job: the request, its validation and the job's work.

The service stays thin: it validates the request (synchronously, so bad input is a 4xx naming the
field), reserves the new chip's id, and runs :func:`chipsim.recalibration.recalibrate` as a job
(:mod:`service.jobs`: a worker thread of its own, never the event loop or the inference threads).
The new chip is published through :meth:`Registry.publish` (the store's atomic rename): a
cancelled, failed or interrupted job leaves no chip, and the parent is never modified.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from chipsim.model_inputs import InputError
from chipsim.modes import RecalibrationAlgorithm
from chipsim.recalibration import (
    ALGORITHMS,
    MAX_BATCH_SIZE,
    MAX_STEP_SIZE,
    MAX_STEPS,
    MIN_BATCH_SIZE,
    MIN_STEPS,
    RecalibrationCancelled,
    RecalibrationConfig,
    RecalibrationError,
    find_layer,
    recalibrate,
)
from service.datasets import parse_eval_set
from service.forms import FormFields
from service.ids import check_chip_id
from service.jobs import Job, JobCancelled, JobTable
from service.problems import Conflict, InvalidField, invalid_request, invalid_value
from service.registry import Registry
from service.schemas import AGE_DOC
from service.served_chip import ServedChip
from service.settings import Settings

log = logging.getLogger("agedchip.service")

#: Share of the uploaded samples recalibrate() keeps out of training for its before/after accuracy.
HOLDOUT = 0.25
MIN_SAMPLES = 8
KIND = "recalibration"


# ----------------------------------------------------------------------------------- request / response models
class RecalibrateForm(BaseModel):
    """Text fields of POST /chips/{chip_id}/recalibrate (multipart; the labelled data is the file `data`)."""

    model_config = ConfigDict(extra="forbid")

    # A Literal over the enum's values keeps the OpenAPI schema an inline enum of strings.
    algorithm: Literal[ALGORITHMS] = Field(  # type: ignore[valid-type]
        RecalibrationAlgorithm.RESIDUAL_V2.value,
        description="Training algorithm on pulsed devices: 'analog-sgd', 'residual' (residual "
        "learning v1) or 'residual-v2' (filtered, thresholded transfer).",
    )
    layer: str | None = Field(
        None,
        description="Analog layer to retrain (GET /chips/{id} lists layer names); "
        "default the last one. Must be a MatMul/Gemm feeding the output.",
    )
    steps: int = Field(300, ge=MIN_STEPS, le=MAX_STEPS, description="Training steps (minibatches).")
    seed: int | None = Field(
        None,
        ge=0,
        le=2**63 - 1,
        description="Seed of the minibatches, device noise and the re-written devices; default random, returned.",
    )
    age: str | None = Field(
        None,
        description=AGE_DOC + " The parent's age at recalibration; default its current age (wall clock × time scale).",
    )
    new_chip_id: str | None = Field(None, description="Id of the new chip; default '<parent>-recal-<n>'.")
    batch_size: int = Field(32, ge=MIN_BATCH_SIZE, le=MAX_BATCH_SIZE, description="Samples per training step.")
    lr: float = Field(
        0.05,
        gt=0,
        le=MAX_STEP_SIZE,
        description="Learning rate (dimensionless: normalised weight per unit of loss gradient).",
    )


FORM = FormFields(
    text=frozenset(RecalibrateForm.model_fields),
    files=frozenset({"data"}),
    file_hints={"data": ".npz with 'x' and 'y'"},
)
#: Form limits handed to the form parser.
MAX_FILES, MAX_FIELDS = 2, 16


class JobProgress(BaseModel):
    step: int = Field(description="Training steps done.")
    steps: int = Field(description="Training steps in total.")
    fraction: float = Field(description="step / steps, in [0, 1].")


class JobResult(BaseModel):
    new_chip_id: str = Field(description="Id of the new, recalibrated chip (now in GET /chips).")
    parent: str = Field(description="The chip that was recalibrated (unchanged).")
    layer: str = Field(description="The re-written layer.")
    algorithm: str = Field(description="Training algorithm used.")
    steps: int = Field(description="Training steps run (minibatches).")
    pulses: int = Field(description="Programming pulses the training wrote (all arrays, transfers included).")
    accuracy_before: float = Field(description="Parent at the age, GDC on, on the held-out samples (ratio).")
    accuracy_before_no_gdc: float = Field(description="The same with GDC off (ratio).")
    accuracy_after: float = Field(description="New chip right after recalibration, GDC on, same samples (ratio).")
    holdout_samples: int = Field(description="Uploaded samples kept out of training for the accuracies (25 %).")
    train_samples: int = Field(description="Uploaded samples used for training.")
    age_s: float = Field(
        description="Parent's age at recalibration, seconds; the new chip at age 0 is the parent "
        "at this age, except for the re-written layer."
    )
    history: list[dict[str, float]] = Field(
        description="Held-out accuracy (ratio) of the trained layer alone and pulses (count), every ~10 % of the steps."
    )
    seconds: float = Field(description="Wall time of the training and publishing, seconds.")


class JobError(BaseModel):
    message: str = Field(description="Why the job failed or was cancelled.")
    field: str | None = Field(None, description="The request field at fault, if any.")


class JobStatus(BaseModel):
    job_id: str = Field(description="Id of the job (GET /jobs/{job_id}).")
    kind: Literal["recalibration"] = Field(description="What the job does.")
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"] = Field(
        description="Where the job is; the last three are final."
    )
    chip_id: str = Field(description="The parent chip.")
    new_chip_id: str = Field(description="Id the new chip gets (reserved; exists only once the job succeeded).")
    algorithm: str = Field(description="Training algorithm.")
    layer: str = Field(description="The layer being re-written.")
    seed: int = Field(description="Seed of the job (minibatches, device noise, re-written devices).")
    age_s: float = Field(description="Parent's age at recalibration, seconds.")
    samples: int = Field(description="Labelled samples uploaded.")
    cancel_requested: bool = Field(description="True once DELETE /jobs/{job_id} asked it to stop.")
    progress: JobProgress = Field(description="Training steps done so far.")
    created_at: float = Field(description="Submission time, Unix seconds.")
    started_at: float | None = Field(description="Start time, Unix seconds (null while queued).")
    finished_at: float | None = Field(description="End time, Unix seconds (null until final).")
    result: JobResult | None = Field(description="Set when the job succeeded.")
    error: JobError | None = Field(description="Set when the job failed (or why it was cancelled).")


class JobList(BaseModel):
    jobs: list[JobStatus] = Field(description="Recent jobs, newest first.")


# ----------------------------------------------------------------------------------- validation
@dataclass
class RecalSpec:
    """A validated request: everything the worker needs."""

    parent: ServedChip
    x: np.ndarray
    y: np.ndarray
    age_s: float
    config: RecalibrationConfig
    new_chip_id: str
    layer: str  # the layer that will be re-written (resolved: the last one if the request named none)


def _default_id(registry: Registry, parent_id: str) -> str:
    """Reserve '<parent>-recal-<n>' for the smallest free n."""
    for n in range(1, 100_000):
        suffix = f"-recal-{n}"
        candidate = parent_id[: 63 - len(suffix)] + suffix
        if registry.taken(candidate):
            continue
        try:
            return registry.reserve(candidate)
        except Conflict:
            if registry.taken(candidate):  # lost a race for this id: try the next one
                continue
            raise  # e.g. the store is full
    raise Conflict("new_chip_id", f"new_chip_id: no free '<parent>-recal-<n>' id for {parent_id!r}; name the new chip")


def _training_data(parent: ServedChip, data: bytes | None, max_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """The uploaded samples as the parent's (single) input and labels, checked like inference inputs."""
    if data is None:
        raise InvalidField(
            "data", "data: required: a .npz file (multipart field 'data') with inputs 'x' and integer labels 'y'"
        )
    names = [i["name"] for i in parent.runtime.inputs]
    if len(names) != 1:
        raise InvalidField(
            "chip_id",
            f"chip_id: chip {parent.chip_id!r} has {len(names)} inputs {names}; "
            "recalibration supports single-input models",
        )
    ev = parse_eval_set(data, names, max_samples, field_name="data")
    if len(ev) < MIN_SAMPLES:
        raise InvalidField(
            "data.y",
            f"data.y: {len(ev)} samples; recalibration needs at least {MIN_SAMPLES} (a few hundred is typical)",
        )
    try:
        feeds = parent.runtime.check_inputs(ev.feeds)
    except InputError as err:  # the inputs are the upload's arrays: name them so
        where = "data." + err.field.split(".", 1)[1] if err.field.startswith("inputs.") else "data"
        raise InvalidField(where, str(err).replace("inputs.", "data.", 1)) from None
    return next(iter(feeds.values())), ev.labels


def prepare(
    registry: Registry, settings: Settings, chip_id: str, fields: dict[str, Any], data: bytes | None
) -> RecalSpec:
    """Validate a request (blocking: call from a worker thread) and reserve the new chip's id."""
    parent = registry.get(chip_id)
    try:
        form = RecalibrateForm.model_validate(fields)
    except ValidationError as err:
        raise invalid_request(err) from None
    x, y = _training_data(parent, data, settings.max_eval_samples)
    try:
        idx, _ = find_layer(parent.chip, form.layer)
    except RecalibrationError as err:
        raise InvalidField(err.field, str(err)) from None
    layer = parent.chip.layers[idx]
    n_classes = layer.shape[1]
    if int(y.max()) >= n_classes:
        raise InvalidField(
            "data.y",
            f"data.y: labels must be class indices in [0, {n_classes - 1}] (layer "
            f"{layer.name!r} has {n_classes} outputs), got {int(y.max())}",
        )
    age_s = parent.age_of(form.age)[0]
    seed = form.seed if form.seed is not None else secrets.randbits(31)
    try:
        config = RecalibrationConfig(
            algorithm=form.algorithm,
            layer=form.layer,
            steps=form.steps,
            batch_size=form.batch_size,
            lr=form.lr,
            seed=seed,
        )
    except ValueError as err:  # a RecalibrationError names its field
        raise invalid_value(err) from None
    if form.new_chip_id is None:
        new_id = _default_id(registry, parent.chip_id)
    else:
        check_chip_id(form.new_chip_id, "new_chip_id")
        new_id = registry.reserve(form.new_chip_id, "new_chip_id")
    return RecalSpec(parent=parent, x=x, y=y, age_s=age_s, config=config, new_chip_id=new_id, layer=layer.name)


# ----------------------------------------------------------------------------------- the job
def submit(jobs: JobTable, registry: Registry, spec: RecalSpec) -> dict[str, Any]:
    """Start the recalibration job of a prepared request; its view. The id reservation ends with the job."""
    cfg = spec.config
    params = {
        "chip_id": spec.parent.chip_id,
        "new_chip_id": spec.new_chip_id,
        "algorithm": cfg.algorithm,
        "layer": spec.layer,
        "seed": cfg.seed,
        "age_s": spec.age_s,
        "samples": int(len(spec.y)),
    }

    def work(job: Job) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            res = recalibrate(
                spec.parent.chip,
                spec.age_s,
                spec.x,
                spec.y,
                cfg,
                spec.new_chip_id,
                holdout=HOLDOUT,
                threads=registry.settings.ort_threads or None,
                progress=job.progress,
                should_cancel=job.cancel.is_set,
            )
        except RecalibrationCancelled as err:
            raise JobCancelled(str(err)) from None
        except (RecalibrationError, InputError) as err:
            raise InvalidField(getattr(err, "field", None), str(err)) from None
        if job.cancel.is_set():
            raise JobCancelled("cancelled after training, before publishing")
        n_hold = int(res.chip.meta["recalibration"]["holdout_samples"])
        registry.publish(res.chip)
        result = {
            "new_chip_id": res.chip.chip_id,
            "parent": spec.parent.chip_id,
            "layer": res.layer,
            "algorithm": cfg.algorithm,
            "steps": res.steps,
            "pulses": int(res.pulses),
            "accuracy_before": res.accuracy_before,
            "accuracy_before_no_gdc": res.accuracy_before_no_gdc,
            "accuracy_after": res.accuracy_after,
            "holdout_samples": n_hold,
            "train_samples": int(len(spec.y)) - n_hold,
            "age_s": spec.age_s,
            "history": res.history,
            "seconds": time.perf_counter() - t0,
        }
        log.info(
            "recalibrated chip %s → %s (%s, %d steps, %d pulses): accuracy %.3f → %.3f in %.1f s",
            spec.parent.chip_id,
            res.chip.chip_id,
            cfg.algorithm,
            res.steps,
            res.pulses,
            res.accuracy_before,
            res.accuracy_after,
            result["seconds"],
        )
        return result

    return jobs.submit(
        KIND,
        cfg.steps,
        params,
        work,
        on_end=lambda: registry.release(spec.new_chip_id),
        failure_note="no chip was written",
    )


def _form_field_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A form field's schema for the docs: its type (the non-null member of an optional), description…"""
    out = {k: v for k, v in schema.items() if k in ("type", "description", "enum", "default")}
    if "type" not in out:
        types = [m.get("type") for m in schema.get("anyOf", []) if m.get("type") not in (None, "null")]
        out["type"] = types[0] if types else "string"
    return out


OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {
                            "type": "string",
                            "format": "binary",
                            "description": ".npz with inputs 'x' (N, …) shaped like the model's input and integer "
                            "labels 'y' (N,) in [0, classes); at least 8 samples, a few hundred "
                            "typical; 25 % are held out for the before/after accuracy.",
                        },
                        **{
                            name: _form_field_schema(schema)
                            for name, schema in RecalibrateForm.model_json_schema()["properties"].items()
                        },
                    },
                }
            }
        },
    }
}
