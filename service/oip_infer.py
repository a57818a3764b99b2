"""Inference over the Open Inference Protocol (``/v2/models/{name}/infer``): a request parsed
once, then run alone or as a member of a dynamic batch (:mod:`service.batched_infer`), with the
same rules as ``POST /infer``; the messages themselves are :mod:`service.oip_protocol`'s."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from service.batched_infer import InferJob, batch_job
from service.ids import is_chip_id
from service.oip_protocol import encode_response, parse_request, run_parameters, split_body, wanted_outputs
from service.problems import NotFound
from service.registry import Registry
from service.schemas import OipInferRequest
from service.served_chip import InferResult, ServedChip

#: A response: its body and headers (``content-type`` among them).
Encoded = tuple[bytes, dict[str, str]]


def chip_of(registry: Registry, name: str, version: str | None = None) -> ServedChip:
    """The chip a model name (and version) names; NotFound (404) for any other."""
    if version is not None and version != "1":
        raise NotFound("model_version", f"model_version: chip {name!r} has only version '1'")
    if not is_chip_id(name):  # for OIP clients, a name that cannot be a chip id is no such model
        raise NotFound("chip_id", f"chip_id: {name!r} is not a valid chip id, so no model of this server")
    return registry.get(name)


@dataclass(frozen=True, eq=False)
class OipCall:
    """A parsed and checked inference request, not yet run."""

    chip: ServedChip
    req: OipInferRequest
    feeds: dict[str, np.ndarray]
    run: dict[str, Any]  # keyword arguments of ServedChip.infer (age, seeds, GDC, field names)
    wanted: list[tuple[str, bool]]  # (output, in binary) to return


def parse_call(registry: Registry, name: str, version: str | None, body: bytes, header_len: str | None) -> OipCall:
    """A request body (with its Inference-Header-Content-Length, if binary) as a call on a chip;
    InvalidField (the protocol's 400) naming the field when it is malformed."""
    chip = chip_of(registry, name, version)
    req, feeds = parse_request(*split_body(body, header_len), chip.runtime.inputs)
    run, binary_all = run_parameters(dict(req.parameters or {}))
    wanted = wanted_outputs(req, [o["name"] for o in chip.runtime.outputs], binary_all)
    return OipCall(chip, req, feeds, run, wanted)


def answer(call: OipCall, res: InferResult) -> Encoded:
    """The response to ``call`` answered by ``res``; counts the request on the chip."""
    call.chip.count(res.batch, energy_j=res.energy_j)
    return encode_response(call.chip, call.req, res, call.wanted)


def run_alone(call: OipCall) -> Encoded:
    """Run the call by itself (blocking: call from a worker thread)."""
    return answer(call, call.chip.infer(call.feeds, **call.run))


def infer_sync(registry: Registry, name: str, version: str | None, body: bytes, header_len: str | None) -> Encoded:
    """One request parsed and run alone (blocking: for bodies too large to parse on the event loop)."""
    return run_alone(parse_call(registry, name, version, body, header_len))


def oip_job(call: OipCall, max_size: int) -> InferJob[Encoded] | None:
    """The call as a member of a dynamic batch, or None when it runs alone (a seed, a batch of
    ``max_size`` samples or more, a model that cannot be merged: :func:`batch_job`)."""
    return batch_job(call.chip, call.feeds, max_size, partial(answer, call), **call.run)
