"""Fleets: program N chips of a model (a job), list, describe, delete, evaluate yield and time to
SLO breach (a job). The work is :mod:`service.fleets` (over chipsim.fleet); submissions take a
place in the program or eval lane (429 when full), and the jobs run in those lanes' job slots."""

from __future__ import annotations

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service.routes.deps import (
    fleets_of,
    lanes_of,
    require_admin,
    require_infer,
    require_json_body,
    require_writer,
)
from service.schemas import (
    ERROR_RESPONSES,
    FleetEvaluateRequest,
    FleetJobStatus,
    FleetList,
    FleetProgramRequest,
    FleetSummary,
)

router = APIRouter(tags=["fleets"])


def _accepted(view: dict) -> JSONResponse:
    return JSONResponse(view, status_code=202, headers={"Location": f"/jobs/{view['job_id']}"})


@router.post(
    "/fleets",
    status_code=202,
    response_model=FleetJobStatus,
    responses=ERROR_RESPONSES,
    dependencies=[
        Depends(require_admin),
        Depends(require_writer("program fleets", allow=("GET",))),
        Depends(require_json_body),
    ],
    summary="Program a fleet: N chips of a zoo model, each with its own seed (a job)",
)
async def create_fleet(req: FleetProgramRequest, request: Request) -> JSONResponse:
    """Programs `n_chips` chips `<fleet_id>-000` … of the zoo model and publishes the fleet atomically:
    it appears in GET /fleets, and its chips in GET /chips, only once the job succeeded; a cancelled,
    failed or interrupted job leaves neither (rolled back at the next start). Returns 202 and the job
    (`Location: /jobs/{job_id}`; progress = chips programmed; DELETE /jobs/{job_id} cancels)."""
    fleets = fleets_of(request)
    async with lanes_of(request).program.ticket() as ticket:
        view = await ticket.run(fleets.submit_program, req)
    return _accepted(view)


@router.get(
    "/fleets",
    response_model=FleetList,
    dependencies=[Depends(require_infer)],
    summary="List fleets (ready, corrupt, pending)",
)
async def list_fleets(request: Request) -> JSONResponse:
    return JSONResponse({"fleets": await anyio.to_thread.run_sync(fleets_of(request).listing)})


@router.get(
    "/fleets/{fleet_id}",
    response_model=FleetSummary,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_infer)],
    summary="A fleet: its model, profile, seeds and chips",
)
async def get_fleet(fleet_id: str, request: Request) -> JSONResponse:
    return JSONResponse(await anyio.to_thread.run_sync(fleets_of(request).get, fleet_id))


@router.delete(
    "/fleets/{fleet_id}",
    status_code=204,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_admin), Depends(require_writer("delete fleets", allow=("GET",)))],
    summary="Delete a fleet and its chips",
)
async def delete_fleet(fleet_id: str, request: Request) -> Response:
    """Unpublishes the fleet atomically, then deletes its chips (a crash in between is finished at the
    next start). 409 while a job programs or evaluates it. Its chips cannot be deleted one by one."""
    await anyio.to_thread.run_sync(fleets_of(request).delete, fleet_id)
    return Response(status_code=204)


@router.post(
    "/fleets/{fleet_id}/evaluate",
    status_code=202,
    response_model=FleetJobStatus,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_infer), Depends(require_json_body)],
    summary="Yield against an accuracy SLO and time to breach, per age, GDC on and off (a job)",
)
async def evaluate_fleet(fleet_id: str, req: FleetEvaluateRequest, request: Request) -> JSONResponse:
    """Evaluates every chip at every age and read-out on the model's eval set (local worker processes,
    or Ray with AGEDCHIP_RAY_ADDRESS). The job's result, per age and GDC on/off: the accuracy
    distribution over chips (mean, std, p5/p50/p95), the yield (chips meeting the SLO) with its 95 %
    Wilson interval; the time to breach of every chip (log-age interpolation, bracketed) and its
    fleet percentiles (docs/fleets.md). Progress = chips done; DELETE /jobs/{job_id} cancels. The
    fleet's gauges on /metrics change only when a job succeeds."""
    fleets = fleets_of(request)
    async with lanes_of(request).eval.ticket() as ticket:
        view = await ticket.run(fleets.submit_evaluate, fleet_id, req)
    return _accepted(view)
