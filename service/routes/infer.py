"""POST /infer: run a chip at an age on a batch of inputs."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from chipsim.modes import GdcMode
from service.jsonio import dumps, finite_list
from service.problems import InvalidField, invalid_request
from service.registry import Registry
from service.routes.deps import lanes_of, registry_of, require_infer, require_json_body
from service.schemas import ERROR_RESPONSES, InferRequest, InferResponse, inline_schema

router = APIRouter(tags=["inference"])


def infer_json(registry: Registry, body: bytes) -> bytes:
    """A JSON request → the JSON response; parsing, inference and encoding all off the event loop."""
    try:
        req = InferRequest.model_validate_json(body)
    except ValidationError as err:
        raise invalid_request(err) from None
    chip = registry.get(req.chip_id)
    res = chip.infer(req.inputs, req.age, read_seed=req.read_seed, gdc=req.gdc, seed=req.seed)
    content: dict[str, Any] = {
        "chip_id": chip.chip_id,
        "age_s": res.age_s,
        "age_source": res.age_source,
        "gdc": res.gdc,
        "gdc_applied": res.gdc is not GdcMode.OFF,
        "read_seed": res.read_seed,
        "seed": res.seed,
        "batch": res.batch,
        "outputs": {o["name"]: finite_list(np.asarray(v)) for o, v in zip(chip.runtime.outputs, res.outputs)},
        "argmax": None,
        "accuracy": None,
        "alpha": res.alpha,
        "energy_j": res.energy_j,
        "latency_s": res.latency_s,
        "cost_model": chip.cost.cost_model.name,
    }
    labelled = correct = 0
    if chip.classifier:
        logits = np.asarray(res.outputs[0])
        pred = logits.argmax(axis=1)
        content["argmax"] = pred.tolist()
        if req.labels is not None:
            if len(req.labels) != res.batch:
                raise InvalidField("labels", f"labels: {len(req.labels)} labels for a batch of {res.batch}")
            classes = logits.shape[1]
            # checked as Python ints: a label beyond int64 (2^63, 10^30) must not reach numpy
            bad = next((i for i, v in enumerate(req.labels) if not 0 <= v < classes), None)
            if bad is not None:
                raise InvalidField(
                    f"labels.{bad}", f"labels.{bad}: class indices must be in [0, {classes - 1}], got {req.labels[bad]}"
                )
            y = np.asarray(req.labels, dtype=np.int64)
            labelled, correct = res.batch, int(np.count_nonzero(pred == y))
            content["accuracy"] = correct / labelled
    elif req.labels is not None:
        raise InvalidField("labels", "labels: the model is not a classifier ((batch, classes) output); omit labels")
    chip.count(res.batch, labelled, correct, res.energy_j)
    return dumps(content)


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
    The JSON body is parsed off the event loop. A full line answers 429 with Retry-After."""
    async with lanes_of(request).infer.ticket() as ticket:  # a place in line before the body is read
        body = await ticket.run(infer_json, registry_of(request), await request.body())
    return Response(body, media_type="application/json")
