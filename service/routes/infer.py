"""POST /infer: run a chip at an age on a batch of inputs."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response
from pydantic import ValidationError

from chipsim.modes import GdcMode
from service.jsonio import dumps, finite_list
from service.problems import InvalidField, invalid_request
from service.registry import Registry
from service.routes.deps import limiters_of, registry_of, require_infer
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
        "chip_id": chip.chip_id, "age_s": res.age_s, "age_source": res.age_source, "gdc": res.gdc,
        "gdc_applied": res.gdc is not GdcMode.OFF, "read_seed": res.read_seed, "seed": res.seed, "batch": res.batch,
        "outputs": {o["name"]: finite_list(np.asarray(v)) for o, v in zip(chip.runtime.outputs, res.outputs)},
        "argmax": None, "accuracy": None, "alpha": res.alpha,
    }
    labelled = correct = 0
    if chip.classifier:
        logits = np.asarray(res.outputs[0])
        pred = logits.argmax(axis=1)
        content["argmax"] = pred.tolist()
        if req.labels is not None:
            if len(req.labels) != res.batch:
                raise InvalidField("labels", f"labels: {len(req.labels)} labels for a batch of {res.batch}")
            y = np.asarray(req.labels, dtype=np.int64)
            if np.any(y < 0) or np.any(y >= logits.shape[1]):
                raise InvalidField("labels", f"labels: class indices must be in [0, {logits.shape[1] - 1}]")
            labelled, correct = res.batch, int(np.count_nonzero(pred == y))
            content["accuracy"] = correct / labelled
    elif req.labels is not None:
        raise InvalidField("labels", "labels: the model is not a classifier ((batch, classes) output); omit labels")
    chip.count(res.batch, labelled, correct)
    return dumps(content)


@router.post("/infer", response_model=InferResponse, responses=ERROR_RESPONSES, dependencies=[Depends(require_infer)],
             summary="Run a chip at an age",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/json": {"schema": inline_schema(InferRequest)}}}})
async def infer(request: Request) -> Response:
    """Inference on a chip at an age (default: its wall-clock age × time scale). The same request
    with the same `seed` returns identical outputs. `labels` update the chip's live accuracy.
    The JSON body is parsed off the event loop."""
    body = await anyio.to_thread.run_sync(infer_json, registry_of(request), await request.body(),
                                          limiter=limiters_of(request).infer)
    return Response(body, media_type="application/json")
