"""On-chip recalibration over HTTP: ``POST /chips/{id}/recalibrate`` starts a job, ``/jobs/{id}`` tracks it
(:mod:`service.recalibration_jobs`)."""

from __future__ import annotations

from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service import recalibration_jobs as recal
from service.forms import read_form, require_form
from service.routes.deps import jobs_of, registry_of, require_admin, require_infer, require_writer, settings_of
from service.schemas import ERROR_RESPONSES, FleetJobStatus

router = APIRouter(tags=["recalibration"])
#: Any job of the table: a recalibration, or a fleet's programming or evaluation.
AnyJob = Annotated[recal.JobStatus | FleetJobStatus, Field(discriminator="kind")]


class AnyJobList(BaseModel):
    jobs: list[AnyJob] = Field(description="Recent jobs (recalibrations and fleet jobs), newest first.")


@router.post(
    "/chips/{chip_id}/recalibrate",
    status_code=202,
    response_model=recal.JobStatus,
    responses=ERROR_RESPONSES,
    openapi_extra=recal.OPENAPI,
    dependencies=[Depends(require_admin), Depends(require_writer("recalibrate chips"))],
    summary="Recalibrate a chip's last layer on-chip into a new chip (a job)",
)
async def recalibrate_chip(chip_id: str, request: Request) -> JSONResponse:
    """Retrain the chip's last analog layer at an age from labelled samples, through pulsed device updates
    (chipsim.recalibration). Returns 202 and the job (`Location: /jobs/{job_id}`); poll it for progress
    and the result. The parent chip is unchanged; the new chip (`new_chip_id`) appears in GET /chips only
    once the job succeeded, with `parent` and `recalibration` in its summary. At its age 0 it is the
    parent at the recalibration age, except for the re-written layer whose drift restarts."""
    require_form(request.headers.get("content-type", ""), "the labelled data is an .npz upload in field 'data'")
    form = await read_form(await request.form(max_files=recal.MAX_FILES, max_fields=recal.MAX_FIELDS), recal.FORM)
    data = form.files.get("data", (None, None))[0]
    registry = registry_of(request)
    spec = await anyio.to_thread.run_sync(recal.prepare, registry, settings_of(request), chip_id, form.fields, data)
    view = recal.submit(jobs_of(request), registry, spec)
    return JSONResponse(view, status_code=202, headers={"Location": f"/jobs/{view['job_id']}"})


@router.get(
    "/jobs", response_model=AnyJobList, dependencies=[Depends(require_infer)], summary="Recent jobs, newest first"
)
async def list_jobs(request: Request) -> JSONResponse:
    return JSONResponse({"jobs": jobs_of(request).listing()})


@router.get(
    "/jobs/{job_id}",
    response_model=AnyJob,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_infer)],
    summary="A job's status, progress and result",
)
async def get_job(job_id: str, request: Request) -> JSONResponse:
    return JSONResponse(jobs_of(request).get(job_id))


@router.delete(
    "/jobs/{job_id}",
    status_code=202,
    response_model=AnyJob,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_admin)],
    summary="Cancel a job",
)
async def cancel_job(job_id: str, request: Request) -> JSONResponse:
    """The job stops at its next training step (fleets: its next chip or task) and writes no chip
    (202; poll until `cancelled`). 409 if it already finished. A cancel that arrives while the new
    chip (or fleet) is being published is too late: the job then succeeds."""
    return JSONResponse(jobs_of(request).cancel(job_id), status_code=202)
