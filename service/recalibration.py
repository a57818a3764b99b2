"""On-chip recalibration over HTTP: ``POST /chips/{id}/recalibrate`` starts a job, ``/jobs/{id}`` tracks it.

The service stays thin: it validates the request (synchronously, so bad input is a 4xx naming the
field), reserves the new chip's id, and runs :func:`chipsim.recalibration.recalibrate` in a worker
thread of its own (never on the event loop, never in the thread pool inference uses). The new chip
is published through :meth:`Registry.publish` (the store's atomic rename): a cancelled, failed or
interrupted job leaves no chip, and the parent is never modified (chips are immutable).

Jobs live in memory (a bounded table of the latest ``MAX_JOBS``; finished jobs are evicted first)
and are lost on restart; chips they produced are in the store like any other.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from chipsim import check_chip_id
from chipsim.recalibration import (
    RecalibrationCancelled, RecalibrationConfig, RecalibrationError, recalibrate,
)
from chipsim.runtime import InputError
from service.durations import DurationError, parse_age
from service.errors import ApiError, validation_to_api_error
from service.registry import LoadedChip, Registry, parse_eval_set
from service.schemas import AGE_DOC, ERROR_RESPONSES
from service.settings import Settings

log = logging.getLogger("agedchip.service")

#: Jobs kept in memory (finished ones are evicted first, oldest first).
MAX_JOBS = 100
#: Share of the uploaded samples recalibrate() keeps out of training for its before/after accuracy.
HOLDOUT = 0.25
MIN_SAMPLES = 8
JOB_ID_RE = re.compile(r"^job-[0-9a-f]{16}$")
FORM_TEXT_FIELDS = {"algorithm", "layer", "steps", "seed", "age", "new_chip_id", "batch_size", "lr"}
FORM_FILE_FIELDS = {"data"}
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


# ----------------------------------------------------------------------------------- request / response models
class RecalibrateForm(BaseModel):
    """Text fields of POST /chips/{chip_id}/recalibrate (multipart; the labelled data is the file `data`)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["analog-sgd", "residual", "residual-v2"] = Field(
        "residual-v2", description="Training algorithm on pulsed devices: 'analog-sgd', 'residual' (residual "
                                   "learning v1) or 'residual-v2' (filtered, thresholded transfer).")
    layer: str | None = Field(None, description="Analog layer to retrain (GET /chips/{id} lists layer names); "
                                                "default the last one. Must be a MatMul/Gemm feeding the output.")
    steps: int = Field(300, ge=1, le=100_000, description="Training steps (minibatches).")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed of the minibatches, device noise and the "
                                                                   "re-written devices; default random, returned.")
    age: str | None = Field(None, description=AGE_DOC + " The parent's age at recalibration; default its current "
                                                        "age (wall clock × time scale).")
    new_chip_id: str | None = Field(None, description="Id of the new chip; default '<parent>-recal-<n>'.")
    batch_size: int = Field(32, ge=1, le=4096, description="Samples per training step.")
    lr: float = Field(0.05, gt=0, le=1, description="Learning rate, normalised-weight units per loss unit.")


class JobProgress(BaseModel):
    step: int = Field(description="Training steps done.")
    steps: int = Field(description="Training steps in total.")
    fraction: float = Field(description="step / steps, in [0, 1].")


class JobResult(BaseModel):
    new_chip_id: str
    parent: str = Field(description="The chip that was recalibrated (unchanged).")
    layer: str = Field(description="The re-written layer.")
    algorithm: str
    steps: int
    pulses: int = Field(description="Programming pulses the training wrote (all arrays, transfers included).")
    accuracy_before: float = Field(description="Parent at the age, GDC on, on the held-out samples.")
    accuracy_before_no_gdc: float = Field(description="The same with GDC off.")
    accuracy_after: float = Field(description="New chip right after recalibration, GDC on, same samples.")
    holdout_samples: int = Field(description="Uploaded samples kept out of training for the accuracies (25 %).")
    train_samples: int
    age_s: float = Field(description="Parent's age at recalibration, seconds; the new chip at age 0 is the parent "
                                     "at this age, except for the re-written layer.")
    history: list[dict[str, float]] = Field(description="Held-out accuracy of the trained layer alone and pulses, "
                                                        "every ~10 % of the steps.")
    seconds: float = Field(description="Wall time of the training and publishing, seconds.")


class JobError(BaseModel):
    message: str
    field: str | None = None


class JobStatus(BaseModel):
    job_id: str
    kind: Literal["recalibration"]
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    chip_id: str = Field(description="The parent chip.")
    new_chip_id: str = Field(description="Id the new chip gets (reserved; exists only once the job succeeded).")
    algorithm: str
    layer: str = Field(description="The layer being re-written.")
    seed: int
    age_s: float
    samples: int = Field(description="Labelled samples uploaded.")
    cancel_requested: bool
    progress: JobProgress
    created_at: float = Field(description="Unix seconds.")
    started_at: float | None
    finished_at: float | None
    result: JobResult | None = Field(description="Set when the job succeeded.")
    error: JobError | None = Field(description="Set when the job failed (or why it was cancelled).")


class JobList(BaseModel):
    jobs: list[JobStatus]


# ----------------------------------------------------------------------------------- jobs
@dataclass
class RecalSpec:
    """A validated request: everything the worker needs."""

    parent: LoadedChip
    x: np.ndarray
    y: np.ndarray
    age_s: float
    config: RecalibrationConfig
    new_chip_id: str
    layer: str  # the layer that will be re-written (resolved: the last one if the request named none)


@dataclass
class Job:
    job_id: str
    spec: RecalSpec
    created_at: float = field(default_factory=time.time)
    status: str = "queued"
    step: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def view(self) -> dict[str, Any]:
        s, cfg = self.spec, self.spec.config
        return {
            "job_id": self.job_id, "kind": "recalibration", "status": self.status,
            "chip_id": s.parent.chip_id, "new_chip_id": s.new_chip_id, "algorithm": cfg.algorithm,
            "layer": s.layer, "seed": cfg.seed, "age_s": s.age_s, "samples": int(len(s.y)),
            "cancel_requested": self.cancel.is_set(),
            "progress": {"step": self.step, "steps": cfg.steps, "fraction": self.step / cfg.steps},
            "created_at": self.created_at, "started_at": self.started_at, "finished_at": self.finished_at,
            "result": self.result, "error": self.error,
        }


class JobTable:
    """Recalibration jobs: a bounded table and one worker thread per job, ``concurrency`` running at once."""

    def __init__(self, registry: Registry, settings: Settings, max_jobs: int = MAX_JOBS,
                 concurrency: int | None = None):
        self.registry = registry
        self.max_jobs = max_jobs
        self._slots = threading.Semaphore(concurrency or settings.program_concurrency)
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._threads: dict[str, threading.Thread] = {}
        self._closed = False

    # ------------------------------------------------------------------ table
    def submit(self, spec: RecalSpec) -> dict[str, Any]:
        job = Job(job_id=f"job-{secrets.token_hex(8)}", spec=spec)
        thread = threading.Thread(target=self._run, args=(job,), name=f"recalibrate-{job.job_id}", daemon=True)
        with self._lock:
            if self._closed:
                self.registry.release(spec.new_chip_id)
                raise ApiError(503, "the service is shutting down", None)
            self._jobs[job.job_id] = job
            self._evict()
            self._threads[job.job_id] = thread
            view = job.view()
        try:
            thread.start()
        except Exception:
            with self._lock:
                self._jobs.pop(job.job_id, None)
                self._threads.pop(job.job_id, None)
            self.registry.release(spec.new_chip_id)
            raise
        return view

    def _evict(self) -> None:
        """Drop the oldest finished jobs beyond ``max_jobs`` (running ones are bounded by the chip limit)."""
        excess = len(self._jobs) - self.max_jobs
        if excess <= 0:
            return
        for job_id in [j for j, job in self._jobs.items() if job.finished][:excess]:
            del self._jobs[job_id]

    def _get(self, job_id: str) -> Job:
        if not isinstance(job_id, str) or not JOB_ID_RE.match(job_id):
            raise ApiError(422, f"job_id: {job_id!r} is not a job id (job-<16 hex digits>)", "job_id")
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"job_id: no job {job_id!r} (jobs are kept in memory: the latest {self.max_jobs}, "
                           "until the service restarts)", "job_id")
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._get(job_id).view()

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [job.view() for job in reversed(self._jobs.values())]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask a job to stop at its next step; no chip is written. 409 if it already finished."""
        with self._lock:
            job = self._get(job_id)
            if job.finished:
                raise ApiError(409, f"job_id: job {job_id!r} already {job.status}; nothing to cancel "
                               "(DELETE /chips/{id} removes a chip)", "job_id")
            job.cancel.set()
            return job.view()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every job and wait (bounded) for the workers: a stopped service leaves no half chip."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                job.cancel.set()
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ worker
    def _set(self, job: Job, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(job, k, v)

    def _progress(self, job: Job) -> Any:
        def progress(step: int, steps: int) -> None:
            job.step = step  # an int assignment is atomic; views read it under the lock

        return progress

    def _run(self, job: Job) -> None:
        spec = job.spec
        acquired = False
        t0 = time.perf_counter()
        try:
            while not (acquired := self._slots.acquire(timeout=0.2)):
                if job.cancel.is_set():
                    break
            if job.cancel.is_set():
                self._finish(job, "cancelled", error={"message": "cancelled before it started", "field": None})
                return
            self._set(job, status="running", started_at=time.time())
            t0 = time.perf_counter()
            res = recalibrate(spec.parent.chip, spec.age_s, spec.x, spec.y, spec.config, spec.new_chip_id,
                              holdout=HOLDOUT, threads=self.registry.settings.ort_threads or None,
                              progress=self._progress(job), should_cancel=job.cancel.is_set)
            if job.cancel.is_set():
                raise RecalibrationCancelled("cancelled after training, before publishing")
            n_hold = int(res.chip.meta["recalibration"]["holdout_samples"])
            self.registry.publish(res.chip)
            result = {
                "new_chip_id": res.chip.chip_id, "parent": spec.parent.chip_id, "layer": res.layer,
                "algorithm": spec.config.algorithm, "steps": res.steps, "pulses": int(res.pulses),
                "accuracy_before": res.accuracy_before, "accuracy_before_no_gdc": res.accuracy_before_no_gdc,
                "accuracy_after": res.accuracy_after, "holdout_samples": n_hold,
                "train_samples": int(len(spec.y)) - n_hold, "age_s": spec.age_s, "history": res.history,
                "seconds": time.perf_counter() - t0,
            }
            log.info("recalibrated chip %s → %s (%s, %d steps, %d pulses): accuracy %.3f → %.3f in %.1f s",
                     spec.parent.chip_id, res.chip.chip_id, spec.config.algorithm, res.steps, res.pulses,
                     res.accuracy_before, res.accuracy_after, result["seconds"])
            self._finish(job, "succeeded", result=result, step=spec.config.steps)
        except RecalibrationCancelled as err:
            self._finish(job, "cancelled", error={"message": str(err), "field": None})
        except ApiError as err:
            self._finish(job, "failed", error={"message": err.message, "field": err.field})
        except (RecalibrationError, InputError) as err:
            self._finish(job, "failed", error={"message": str(err), "field": getattr(err, "field", None)})
        except Exception:
            log.exception("recalibration job %s (chip %s) failed", job.job_id, spec.parent.chip_id)
            self._finish(job, "failed", error={"message": "internal error during recalibration (logged on the "
                                                          "server); no chip was written", "field": None})
        finally:
            self.registry.release(spec.new_chip_id)  # no-op once published
            if acquired:
                self._slots.release()
            with self._lock:
                self._threads.pop(job.job_id, None)

    def _finish(self, job: Job, status: str, **kw: Any) -> None:
        self._set(job, status=status, finished_at=time.time(), **kw)


# ----------------------------------------------------------------------------------- validation
def _default_id(registry: Registry, parent_id: str) -> str:
    """Reserve '<parent>-recal-<n>' for the smallest free n."""
    for n in range(1, 100_000):
        suffix = f"-recal-{n}"
        candidate = parent_id[: 63 - len(suffix)] + suffix
        if registry.taken(candidate):
            continue
        try:
            return registry.reserve(candidate)
        except ApiError:
            if registry.taken(candidate):  # lost a race for this id: try the next one
                continue
            raise  # e.g. the store is full
    raise ApiError(409, f"new_chip_id: no free '<parent>-recal-<n>' id for {parent_id!r}; name the new chip",
                   "new_chip_id")


def prepare(registry: Registry, settings: Settings, chip_id: str, fields: dict[str, Any],
            data: bytes | None) -> RecalSpec:
    """Validate a request (blocking: call from a worker thread) and reserve the new chip's id."""
    from chipsim.recalibration import find_layer

    parent = registry.get(chip_id)
    try:
        form = RecalibrateForm.model_validate(fields)
    except ValidationError as err:
        raise validation_to_api_error(err) from None
    if data is None:
        raise ApiError(422, "data: required: a .npz file (multipart field 'data') with inputs 'x' and integer "
                       "labels 'y'", "data")
    names = [i["name"] for i in parent.runtime.inputs]
    if len(names) != 1:
        raise ApiError(422, f"chip_id: chip {chip_id!r} has {len(names)} inputs {names}; recalibration supports "
                       "single-input models", "chip_id")
    ev = parse_eval_set(data, names, settings.max_eval_samples, field_name="data")
    if len(ev) < MIN_SAMPLES:
        raise ApiError(422, f"data.y: {len(ev)} samples; recalibration needs at least {MIN_SAMPLES} (a few hundred "
                       "is typical)", "data.y")
    try:
        feeds = parent.runtime.check_inputs(ev.feeds)
    except InputError as err:
        where = "data." + err.field.split(".", 1)[1] if err.field.startswith("inputs.") else "data"
        raise ApiError(422, str(err).replace("inputs.", "data.", 1), where) from None
    try:
        idx, _ = find_layer(parent.chip, form.layer)
    except RecalibrationError as err:
        raise ApiError(422, str(err), err.field) from None
    n_classes = parent.chip.layers[idx].shape[1]
    if int(ev.labels.max()) >= n_classes:
        raise ApiError(422, f"data.y: labels must be class indices in [0, {n_classes - 1}] (layer "
                       f"{parent.chip.layers[idx].name!r} has {n_classes} outputs), got {int(ev.labels.max())}",
                       "data.y")
    try:
        age_s = parent.wall_age() if form.age is None else parse_age(form.age)
    except DurationError as err:
        raise ApiError(422, str(err), "age") from None
    seed = form.seed if form.seed is not None else secrets.randbits(31)
    try:
        config = RecalibrationConfig(algorithm=form.algorithm, layer=form.layer, steps=form.steps,
                                     batch_size=form.batch_size, lr=form.lr, seed=seed)
    except RecalibrationError as err:
        raise ApiError(422, str(err), err.field) from None
    except ValueError as err:
        raise ApiError.from_value_error(err) from None
    if form.new_chip_id is None:
        new_id = _default_id(registry, parent.chip_id)
    else:
        try:
            check_chip_id(form.new_chip_id)
        except ValueError as err:
            raise ApiError(422, "new_" + str(err), "new_chip_id") from None
        try:
            new_id = registry.reserve(form.new_chip_id)
        except ApiError as err:
            raise ApiError(err.status, err.message.replace("chip_id:", "new_chip_id:", 1), "new_chip_id") from None
    x = next(iter(feeds.values()))
    return RecalSpec(parent=parent, x=x, y=ev.labels, age_s=age_s, config=config, new_chip_id=new_id,
                     layer=parent.chip.layers[idx].name)


async def _parse_form(request: Request) -> tuple[dict[str, Any], bytes | None]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("multipart/form-data", "application/x-www-form-urlencoded"):
        raise ApiError(415, f"content-type: expected multipart/form-data (the labelled data is an .npz upload in "
                       f"field 'data'), got {ctype!r}", "content-type")
    form = await request.form(max_files=2, max_fields=16)
    fields: dict[str, Any] = {}
    data: bytes | None = None
    seen: set[str] = set()
    try:
        for key, value in form.multi_items():
            if key in seen:
                raise ApiError(422, f"{key}: given more than once", key)
            seen.add(key)
            if isinstance(value, UploadFile):
                if key not in FORM_FILE_FIELDS:
                    raise ApiError(422, f"{key}: unknown file field; the only file field is 'data'", key)
                data = await value.read()
            else:
                if key in FORM_FILE_FIELDS:
                    raise ApiError(422, f"{key}: must be a file upload (.npz with 'x' and 'y')", key)
                if key not in FORM_TEXT_FIELDS:
                    raise ApiError(422, f"{key}: unknown field; fields: {sorted(FORM_TEXT_FIELDS | FORM_FILE_FIELDS)}",
                                   key)
                if value != "":
                    fields[key] = value
    finally:
        await form.close()
    return fields, data


# ----------------------------------------------------------------------------------- routes
def _admin(request: Request) -> None:
    from service.app import require_admin  # here: service.app imports this module

    require_admin(request)


def _infer(request: Request) -> None:
    from service.app import require_infer

    require_infer(request)


def jobs_of(request: Request) -> JobTable:
    state = request.app.state
    table = getattr(state, "recalibration_jobs", None)
    if table is None:  # an app that did not create one at startup
        table = state.recalibration_jobs = JobTable(state.registry, state.settings)
    return table


def _form_field_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A form field's schema for the docs: its type (the non-null member of an optional), description…"""
    out = {k: v for k, v in schema.items() if k in ("type", "description", "enum", "default")}
    if "type" not in out:
        types = [m.get("type") for m in schema.get("anyOf", []) if m.get("type") not in (None, "null")]
        out["type"] = types[0] if types else "string"
    return out


RECALIBRATE_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {"type": "string", "format": "binary",
                         "description": ".npz with inputs 'x' (N, …) shaped like the model's input and integer "
                                        "labels 'y' (N,) in [0, classes); at least 8 samples, a few hundred "
                                        "typical; 25 % are held out for the before/after accuracy."},
                **{name: _form_field_schema(schema)
                   for name, schema in RecalibrateForm.model_json_schema()["properties"].items()},
            },
        }}},
    }
}

router = APIRouter(tags=["recalibration"])


@router.post("/chips/{chip_id}/recalibrate", status_code=202, response_model=JobStatus, responses=ERROR_RESPONSES,
             openapi_extra=RECALIBRATE_OPENAPI, dependencies=[Depends(_admin)],
             summary="Recalibrate a chip's last layer on-chip into a new chip (a job)")
async def recalibrate_chip(chip_id: str, request: Request) -> JSONResponse:
    """Retrain the chip's last analog layer at an age from labelled samples, through pulsed device updates
    (chipsim.recalibration). Returns 202 and the job (`Location: /jobs/{job_id}`); poll it for progress
    and the result. The parent chip is unchanged; the new chip (`new_chip_id`) appears in GET /chips only
    once the job succeeded, with `parent` and `recalibration` in its summary. At its age 0 it is the
    parent at the recalibration age, except for the re-written layer whose drift restarts."""
    fields, data = await _parse_form(request)
    registry: Registry = request.app.state.registry
    settings: Settings = request.app.state.settings
    spec = await anyio.to_thread.run_sync(prepare, registry, settings, chip_id, fields, data)
    view = jobs_of(request).submit(spec)
    return JSONResponse(view, status_code=202, headers={"Location": f"/jobs/{view['job_id']}"})


@router.get("/jobs", response_model=JobList, dependencies=[Depends(_infer)], summary="Recent jobs, newest first")
async def list_jobs(request: Request) -> JSONResponse:
    return JSONResponse({"jobs": jobs_of(request).listing()})


@router.get("/jobs/{job_id}", response_model=JobStatus, responses=ERROR_RESPONSES, dependencies=[Depends(_infer)],
            summary="A job's status, progress and result")
async def get_job(job_id: str, request: Request) -> JSONResponse:
    return JSONResponse(jobs_of(request).get(job_id))


@router.delete("/jobs/{job_id}", status_code=202, response_model=JobStatus, responses=ERROR_RESPONSES,
               dependencies=[Depends(_admin)], summary="Cancel a job")
async def cancel_job(job_id: str, request: Request) -> JSONResponse:
    """The job stops at its next training step and writes no chip (202; poll until `cancelled`).
    409 if it already finished. A cancel that arrives while the new chip is being published is too
    late: the job then succeeds."""
    return JSONResponse(jobs_of(request).cancel(job_id), status_code=202)


__all__ = ["JobTable", "RecalibrateForm", "prepare", "router"]
