"""Chips: program, list, describe, delete, evaluate, drift metrics; the zoo.

Programming runs in the program lane, evaluation and drift in the eval lane (bounded lines,
:mod:`service.admission`); an evaluation stops when its client leaves or the service stops."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from service import program_request
from service.forms import FORM_TYPES, JSON_TYPES, media_type, read_form
from service.problems import InvalidField
from service.routes.deps import (
    cancel_when_abandoned,
    lanes_of,
    registry_of,
    require_admin,
    require_infer,
    require_json_body,
    require_writer,
)
from service.schemas import (
    ERROR_RESPONSES,
    GDC_ON_MODES,
    WRITER_ERROR_RESPONSES,
    ChipList,
    ChipSummary,
    DriftResponse,
    EvaluateRequest,
    EvaluateResponse,
    ZooList,
)

router = APIRouter(tags=["chips"])


async def _program_spec(request: Request) -> program_request.ProgramSpec:
    ctype = media_type(request.headers.get("content-type", ""))
    if ctype in FORM_TYPES:
        form = await request.form(max_files=program_request.MAX_FILES, max_fields=program_request.MAX_FIELDS)
        parsed = await read_form(form, program_request.FORM)
        return program_request.program_spec(parsed.fields, parsed.files)
    if ctype in JSON_TYPES:
        return program_request.json_program_spec(await request.body())
    raise program_request.unsupported(ctype)


@router.post(
    "/program",
    status_code=201,
    response_model=ChipSummary,
    responses=WRITER_ERROR_RESPONSES,
    openapi_extra=program_request.OPENAPI,
    dependencies=[Depends(require_admin), Depends(require_writer("program chips"))],
    summary="Program a new chip from an ONNX upload or a zoo model",
)
async def program(request: Request) -> JSONResponse:
    """Compile the model, program its analog layers onto a new chip (sampling programming noise,
    drift exponents and faults once), publish it atomically and return its summary. The ONNX file
    is stored once by its sha256 digest and shared by chips. With ``dry_run=true``: 200 with what
    programming would do (analog nodes, digital nodes and why, refusals); nothing programmed."""
    registry = registry_of(request)
    async with lanes_of(request).program.ticket() as ticket:  # a place in line before the upload is read
        spec = await _program_spec(request)
        if spec.dry_run:  # a report, not a chip: 200, nothing programmed
            return JSONResponse(await ticket.run(lambda: registry.dry_run(spec)), status_code=200)
        summary = await ticket.run(lambda: registry.program(spec).summary())
    return JSONResponse(summary, status_code=201, headers={"Location": f"/chips/{summary['chip_id']}"})


@router.get(
    "/chips", response_model=ChipList, dependencies=[Depends(require_infer)], summary="List chips (ready and corrupt)"
)
async def list_chips(request: Request) -> JSONResponse:
    return JSONResponse({"chips": registry_of(request).listing()})


@router.get(
    "/chips/{chip_id}",
    response_model=ChipSummary,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_infer)],
    summary="A chip's summary",
)
async def get_chip(chip_id: str, request: Request) -> JSONResponse:
    chip = registry_of(request).get(chip_id)
    return JSONResponse(await anyio.to_thread.run_sync(chip.summary))


@router.delete(
    "/chips/{chip_id}",
    status_code=204,
    responses=WRITER_ERROR_RESPONSES,
    dependencies=[Depends(require_admin), Depends(require_writer("delete chips", allow=("GET",)))],
    summary="Delete a chip",
)
async def delete_chip(chip_id: str, request: Request) -> Response:
    await anyio.to_thread.run_sync(registry_of(request).delete, chip_id)
    return Response(status_code=204)


@router.post(
    "/chips/{chip_id}/evaluate",
    response_model=EvaluateResponse,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_infer), Depends(require_json_body)],
    summary="Accuracy vs age on the chip's eval set, GDC on and off",
)
async def evaluate(chip_id: str, req: EvaluateRequest, request: Request) -> JSONResponse:
    """For each age: accuracy mean ± std over `readouts` read-outs (read seeds 0…n−1, per-MVM noise
    seeded alike, so results are reproducible), with and without GDC. With an `slo`, the time to SLO
    breach too (log-age interpolation between the evaluated ages, bracketed; docs/fleets.md), whose
    GDC-on wall-clock countdown feeds `agedchip_chip_slo_breach_in_seconds`."""
    chip = registry_of(request).get(chip_id)
    slo = None if req.slo is None else (req.slo.metric, req.slo.threshold)
    async with lanes_of(request).eval.ticket() as ticket, cancel_when_abandoned(request) as cancel:
        result = await ticket.run(chip.evaluate, req.ages, req.readouts, req.samples, req.gdc_mode, cancel.is_set, slo)
    return JSONResponse(result)


@router.get(
    "/chips/{chip_id}/drift",
    response_model=DriftResponse,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_infer)],
    summary="Drift metrics per layer at an age",
)
async def drift(
    chip_id: str,
    request: Request,
    age: str | None = Query(
        None, description="Age: seconds or a duration ('1h', '30d', 'P1Y'); default the chip's current age."
    ),
    read_seed: int = Query(0, ge=0, le=2**63 - 1, description="Read-out seed (1/f noise draw)."),
    gdc: str | None = Query(
        None, description="GDC mode of the 'with GDC' numbers: global, column, exact (default: the profile's)."
    ),
) -> JSONResponse:
    chip = registry_of(request).get(chip_id)
    if gdc is not None and gdc not in GDC_ON_MODES:
        raise InvalidField("gdc", f"gdc: expected {', '.join(GDC_ON_MODES[:-1])} or {GDC_ON_MODES[-1]}, got {gdc!r}")
    age_s = chip.age_of(age)[0]

    def work() -> dict[str, Any]:
        return {"chip_id": chip.chip_id, **chip.drift(age_s, read_seed, gdc)}

    async with lanes_of(request).eval.ticket() as ticket:
        return JSONResponse(await ticket.run(work))


@router.get(
    "/zoo",
    response_model=ZooList,
    dependencies=[Depends(require_infer)],
    summary="Models of the zoo (programmable by name)",
)
async def zoo(request: Request) -> JSONResponse:
    return JSONResponse({"models": await anyio.to_thread.run_sync(registry_of(request).zoo.listing)})
