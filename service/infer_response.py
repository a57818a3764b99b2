"""The JSON answer of POST /infer: one request's result, its labels scored, the chip's counters updated."""

from __future__ import annotations

from typing import Any

import numpy as np

from chipsim.modes import GdcMode
from service.jsonio import dumps, finite_list
from service.problems import InvalidField
from service.schemas import InferRequest
from service.served_chip import InferResult, ServedChip


def infer_response(chip: ServedChip, req: InferRequest, res: InferResult) -> bytes:
    """The response body of ``req`` answered by ``res``; counts the request on the chip (samples,
    labelled and correct samples, energy). InvalidField for labels that do not fit the outputs."""
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
