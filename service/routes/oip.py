"""Open Inference Protocol v2 (KServe/Triton) routes under ``/v2``: a chip is a model (version "1").

The protocol's messages are in :mod:`service.oip_protocol`; invalid input is answered with the
protocol's 400 by :mod:`service.errors`, and a name that cannot be a chip id names no model (404).
Server metadata and health stay open (probes; nothing about chips); model metadata, model
readiness and inference take the inference key.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from service import __version__
from service.batched_infer import PARSE_ON_LOOP_BYTES
from service.batching import Batcher
from service.oip_infer import Encoded, chip_of, infer_sync, oip_job, parse_call, run_alone
from service.oip_protocol import HEADER_LENGTH, oip_datatype
from service.registry import Registry
from service.routes.deps import lanes_of, registry_of, require_infer, stopping
from service.schemas import (
    OIP_ERROR_RESPONSES,
    OipInferRequest,
    OipInferResponse,
    OipLive,
    OipModelMetadata,
    OipModelReady,
    OipReady,
    OipServerMetadata,
    inline_schema,
)

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
#: Model routes show chips: the inference key guards them.
KEYED = [Depends(require_infer)]


def _metadata(registry: Registry, name: str, version: str | None) -> dict[str, Any]:
    chip = chip_of(registry, name, version)

    def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {
                "name": m["name"],
                "datatype": oip_datatype(m["dtype"]),
                "shape": [d if isinstance(d, int) and d > 0 else -1 for d in m["shape"]],
            }
            for m in items
        ]

    return {
        "name": chip.chip_id,
        "versions": ["1"],
        "platform": "agedchip_onnx",
        "inputs": tensors(chip.runtime.inputs),
        "outputs": tensors(chip.runtime.outputs),
        "parameters": {
            "profile": chip.preset,
            "model": chip.model_name,
            "time_scale": chip.time_scale,
            "age_s": chip.wall_age(),
        },
    }


@router.get("", response_model=OipServerMetadata, summary="Server metadata")
async def server_metadata() -> JSONResponse:
    return JSONResponse(
        {"name": "agedchip", "version": __version__, "extensions": ["binary_tensor_data", "agedchip_age"]}
    )


@router.get("/health/live", response_model=OipLive, summary="Server liveness")
async def live() -> JSONResponse:
    return JSONResponse({"live": True})


@router.get(
    "/health/ready",
    response_model=OipReady,
    summary="Server readiness",
    responses={503: {"model": OipReady, "description": "Chips still loading."}},
)
async def ready(request: Request) -> JSONResponse:
    ok = registry_of(request).loaded and not stopping(request).is_set()
    return JSONResponse({"ready": ok}, status_code=200 if ok else 503)


@router.get(
    "/models/{model_name}",
    response_model=OipModelMetadata,
    responses=OIP_ERROR_RESPONSES,
    dependencies=KEYED,
    summary="Model (chip) metadata",
)
async def model_metadata(model_name: str, request: Request) -> JSONResponse:
    return JSONResponse(_metadata(registry_of(request), model_name, None))


@router.get(
    "/models/{model_name}/versions/{model_version}",
    response_model=OipModelMetadata,
    responses=OIP_ERROR_RESPONSES,
    dependencies=KEYED,
    summary="Model (chip) metadata, versioned",
)
async def model_metadata_v(model_name: str, model_version: str, request: Request) -> JSONResponse:
    return JSONResponse(_metadata(registry_of(request), model_name, model_version))


@router.get(
    "/models/{model_name}/ready",
    response_model=OipModelReady,
    responses=OIP_ERROR_RESPONSES,
    dependencies=KEYED,
    summary="Model (chip) readiness",
)
async def model_ready(model_name: str, request: Request) -> JSONResponse:
    chip = chip_of(registry_of(request), model_name)
    return JSONResponse({"name": chip.chip_id, "ready": True})


@router.get(
    "/models/{model_name}/versions/{model_version}/ready",
    response_model=OipModelReady,
    responses=OIP_ERROR_RESPONSES,
    dependencies=KEYED,
    summary="Model (chip) readiness, versioned",
)
async def model_ready_v(model_name: str, model_version: str, request: Request) -> JSONResponse:
    chip = chip_of(registry_of(request), model_name, model_version)
    return JSONResponse({"name": chip.chip_id, "ready": True})


INFER_DOC: dict[str, Any] = dict(
    response_model=OipInferResponse,
    responses=OIP_ERROR_RESPONSES,
    dependencies=KEYED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(OipInferRequest)}},
            "description": "JSON, or with the binary extension: JSON header of "
            "Inference-Header-Content-Length bytes followed by raw tensors.",
        }
    },
)


async def _infer(request: Request, model_name: str, model_version: str | None) -> Response:
    registry = registry_of(request)
    async with lanes_of(request).infer.ticket() as ticket:  # a place in line before the body is read
        body, header_len = await request.body(), request.headers.get(HEADER_LENGTH)
        batcher: Batcher | None = request.app.state.batcher
        out: Encoded
        if batcher is not None and len(body) <= PARSE_ON_LOOP_BYTES:
            call = parse_call(registry, model_name, model_version, body, header_len)  # small: cheap here
            job = oip_job(call, batcher.config.max_size)
            if job is not None:
                out = await batcher.submit(job.key, job, job.batch, ticket)
            else:
                out = await ticket.run(run_alone, call)
        else:
            out = await ticket.run(infer_sync, registry, model_name, model_version, body, header_len)
    content, headers = out
    headers = dict(headers)
    media = headers.pop("content-type")
    return Response(content, media_type=media, headers=headers)


@router.post("/models/{model_name}/infer", summary="Inference (OIP v2)", **INFER_DOC)
async def infer(request: Request, model_name: str) -> Response:
    """Inference on chip `model_name`; `parameters.age` sets the age (default wall clock × time scale).
    The same request with the same `parameters.seed` returns identical outputs. Unseeded requests
    may run merged with others of the same chip, age, read seed and GDC mode (dynamic batching,
    AGEDCHIP_BATCH_*, as POST /infer); each still gets its own per-MVM noise. A full line answers
    429 with Retry-After."""
    return await _infer(request, model_name, None)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer", summary="Inference (OIP v2), versioned", **INFER_DOC
)
async def infer_v(request: Request, model_name: str, model_version: str) -> Response:
    return await _infer(request, model_name, model_version)
