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
from service.ids import is_chip_id
from service.oip_protocol import (
    HEADER_LENGTH,
    encode_response,
    oip_datatype,
    parse_request,
    run_parameters,
    split_body,
    wanted_outputs,
)
from service.problems import NotFound
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
from service.served_chip import ServedChip

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])
#: Model routes show chips: the inference key guards them.
KEYED = [Depends(require_infer)]


def chip_of(registry: Registry, name: str, version: str | None = None) -> ServedChip:
    if version is not None and version != "1":
        raise NotFound("model_version", f"model_version: chip {name!r} has only version '1'")
    if not is_chip_id(name):  # for OIP clients, a name that cannot be a chip id is no such model
        raise NotFound("chip_id", f"chip_id: {name!r} is not a valid chip id, so no model of this server")
    return registry.get(name)


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


def infer_sync(
    registry: Registry, name: str, version: str | None, body: bytes, header_len: str | None
) -> tuple[bytes, dict[str, str]]:
    """One inference request (blocking: parsing, inference and encoding in a worker thread)."""
    chip = chip_of(registry, name, version)
    req, feeds = parse_request(*split_body(body, header_len), chip.runtime.inputs)
    kwargs, binary_all = run_parameters(dict(req.parameters or {}))
    res = chip.infer(feeds, **kwargs)
    chip.count(res.batch, energy_j=res.energy_j)
    wanted = wanted_outputs(req, [o["name"] for o in chip.runtime.outputs], binary_all)
    return encode_response(chip, req, res, wanted)


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
    async with lanes_of(request).infer.ticket() as ticket:  # a place in line before the body is read
        content, headers = await ticket.run(
            infer_sync,
            registry_of(request),
            model_name,
            model_version,
            await request.body(),
            request.headers.get(HEADER_LENGTH),
        )
    media = headers.pop("content-type")
    return Response(content, media_type=media, headers=headers)


@router.post("/models/{model_name}/infer", summary="Inference (OIP v2)", **INFER_DOC)
async def infer(request: Request, model_name: str) -> Response:
    """Inference on chip `model_name`; `parameters.age` sets the age (default wall clock × time scale)."""
    return await _infer(request, model_name, None)


@router.post(
    "/models/{model_name}/versions/{model_version}/infer", summary="Inference (OIP v2), versioned", **INFER_DOC
)
async def infer_v(request: Request, model_name: str, model_version: str) -> Response:
    return await _infer(request, model_name, model_version)
