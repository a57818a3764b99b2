"""POST /infer: run a chip at an age on a batch of inputs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from service.batched_infer import PARSE_ON_LOOP_BYTES, infer_job, parse_request
from service.batching import Batcher
from service.infer_response import infer_response
from service.registry import Registry
from service.routes.deps import lanes_of, registry_of, require_infer, require_json_body
from service.schemas import ERROR_RESPONSES, InferRequest, InferResponse, inline_schema

router = APIRouter(tags=["inference"])


def infer_json(registry: Registry, body: bytes | InferRequest) -> bytes:
    """A JSON request (or one parsed already) → the JSON response, off the event loop."""
    req = body if isinstance(body, InferRequest) else parse_request(body)
    chip = registry.get(req.chip_id)
    res = chip.infer(req.inputs, req.age, read_seed=req.read_seed, gdc=req.gdc, seed=req.seed)
    return infer_response(chip, req, res)


@router.post(
    "/infer",
    response_model=InferResponse,
    responses=ERROR_RESPONSES,
    dependencies=[Depends(require_infer), Depends(require_json_body)],
    summary="Run a chip at an age",
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": inline_schema(InferRequest)}}}
    },
)
async def infer(request: Request) -> Response:
    """Inference on a chip at an age (default: its wall-clock age × time scale). The same request
    with the same `seed` returns identical outputs. `labels` update the chip's live accuracy.
    Unseeded requests may run merged with others of the same chip, age, read seed and GDC mode
    (dynamic batching, AGEDCHIP_BATCH_*); each still gets its own per-MVM noise. A full line
    answers 429 with Retry-After."""
    registry = registry_of(request)
    async with lanes_of(request).infer.ticket() as ticket:  # a place in line before the body is read
        body: bytes | InferRequest = await request.body()
        batcher: Batcher | None = request.app.state.batcher
        if batcher is not None and len(body) <= PARSE_ON_LOOP_BYTES:
            body = parse_request(body)  # small: cheaper here than a worker thread's round trip
            job = infer_job(registry, body, batcher.config.max_size)
            if job is not None:
                return Response(await batcher.submit(job.key, job, job.batch, ticket), media_type="application/json")
        out = await ticket.run(infer_json, registry, body)
    return Response(out, media_type="application/json")
