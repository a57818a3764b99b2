"""Inference requests as members of dynamic batches (:mod:`service.batching`): which requests
may share one run, the merged run, and each member's own answer. Both inference routes use it,
``POST /infer`` (:func:`infer_job`) and the Open Inference Protocol's ``/v2/models/{name}/infer``
(:mod:`service.oip_infer`); a job carries its protocol's encoder (``answer``), so members of
either route share a run when their key agrees.

Requests share a run only when everything but their samples agrees: the chip (the loaded object,
so a chip deleted and programmed again under its id is another chip), the effective age, the
read seed (the read-out), the GDC mode and the input signature (names, dtypes, non-batch
dimensions); that tuple is the batch key. A request with a ``seed`` never joins a batch: its
per-MVM noise is keyed by its seed, so it runs alone, bit-identical to a server without batching.
Unseeded members of one batch draw their per-MVM noise in one run, one fresh standard normal per
analog output (chipsim.mvm_noise), so every sample's noise is independent of its neighbours', as
in separate runs. Only models whose inputs and outputs all put one symbolic batch dimension
first are merged (outputs are split by rows); the rest run alone.

A merged run that fails is retried member by member, so the member that caused it fails alone;
a member's own answer (its labels, say) fails only that member.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

import numpy as np
from pydantic import ValidationError

from chipsim.modes import GdcMode
from service.infer_response import infer_response
from service.problems import invalid_request
from service.registry import Registry
from service.schemas import InferRequest
from service.served_chip import InferResult, ServedChip

#: A member's response, as its protocol encodes it.
T = TypeVar("T")

#: Largest body parsed on the event loop to join a batch, bytes (larger ones are parsed in a
#: worker thread and run alone). A batch-1 request of the zoo's models is ~1.4 KiB; parsing and
#: checking one of 64 KiB takes ~0.3 ms of the loop.
PARSE_ON_LOOP_BYTES = 64 << 10


@dataclass(frozen=True, eq=False)
class InferJob(Generic[T]):
    """One checked request waiting for, or running in, a batch. ``answer`` turns its share of a
    run into its response (its protocol's encoder): it counts the request on the chip and may
    raise the request's own errors (labels that do not fit, say), which fail only this member."""

    chip: ServedChip
    feeds: dict[str, np.ndarray]
    age_s: float
    age_source: str
    read_seed: int
    mode: GdcMode
    batch: int
    age_field: str  # the request's age field, named by errors of the run (a refused new read-out)
    answer: Callable[[InferResult], T]

    @property
    def key(self) -> tuple[Any, ...]:
        """What a batch's members share: everything that decides outputs, but the samples."""
        signature = tuple((name, a.dtype.str, a.shape[1:]) for name, a in self.feeds.items())
        return (self.chip, self.age_s, self.read_seed, self.mode, signature)


def parse_request(body: bytes) -> InferRequest:
    """The request of a JSON body; InvalidField (422) naming the field when it is malformed."""
    try:
        return InferRequest.model_validate_json(body)
    except ValidationError as err:
        raise invalid_request(err) from None


def mergeable(chip: ServedChip) -> bool:
    """Whether requests on the chip can share a run: one symbolic batch dimension leads every
    input and output (then rows of the outputs are samples)."""
    io = [*chip.runtime.inputs, *chip.runtime.outputs]
    first = {m["shape"][0] if m["shape"] else None for m in io}
    return len(first) == 1 and isinstance(next(iter(first)), str)


def batch_job(
    chip: ServedChip,
    inputs: Any,
    max_size: int,
    answer: Callable[[InferResult], T],
    *,
    age: Any = None,
    read_seed: int = 0,
    gdc: bool | str = True,
    seed: int | None = None,
    age_field: str = "age",
    gdc_field: str = "gdc",
) -> InferJob[T] | None:
    """A request (the arguments of :meth:`ServedChip.infer`) checked as a batch member, or None
    when it runs alone: it has a seed, fills a batch by itself (``max_size`` samples), or its
    chip's model cannot be merged. Bad requests raise the same errors as :meth:`ServedChip.infer`."""
    if seed is not None or not mergeable(chip):
        return None
    feeds = chip.check_feeds(inputs)
    batch = int(next(iter(feeds.values())).shape[0])
    if batch >= max_size:
        return None
    age_s, source = chip.age_of(age, age_field)
    mode = chip.gdc_mode(gdc, gdc_field)
    return InferJob(chip, feeds, age_s, source, read_seed, mode, batch, age_field, answer)


def infer_job(registry: Registry, req: InferRequest, max_size: int) -> InferJob[bytes] | None:
    """A POST /infer request as a batch member (:func:`batch_job`), answered in JSON."""
    if req.seed is not None:  # runs alone: no need to look its chip up here
        return None
    chip = registry.get(req.chip_id)
    answer = partial(infer_response, chip, req)
    return batch_job(chip, req.inputs, max_size, answer, age=req.age, read_seed=req.read_seed, gdc=req.gdc)


def run_batch(jobs: list[InferJob[T]]) -> list[T | Exception]:
    """Each job's response body, or the exception that answers it, from one merged run (jobs
    share a key). Blocking: call from a worker thread."""
    if len(jobs) > 1:
        try:
            merged = _merged(jobs)
        except Exception:  # one member broke the run: each runs alone, and fails alone
            merged = None
        if merged is not None:
            return _split(jobs, merged)
    return [_alone(j) for j in jobs]


def _run(job: InferJob, feeds: dict[str, np.ndarray]) -> InferResult:
    return job.chip.infer(feeds, job.age_s, read_seed=job.read_seed, gdc=job.mode, age_field=job.age_field)


def _merged(jobs: list[InferJob]) -> InferResult:
    first = jobs[0]
    feeds = {name: np.concatenate([j.feeds[name] for j in jobs]) for name in first.feeds}
    res = _run(first, feeds)
    total = sum(j.batch for j in jobs)
    for out in res.outputs:
        if np.ndim(out) == 0 or np.shape(out)[0] != total:
            raise ValueError(f"an output of shape {np.shape(out)} does not hold the batch's {total} rows")
    return res


def _split(jobs: list[InferJob[T]], merged: InferResult) -> list[T | Exception]:
    out: list[T | Exception] = []
    start = 0
    for j in jobs:
        rows = slice(start, start + j.batch)
        start += j.batch
        try:
            energy_j, latency_s = j.chip.request_cost(j.feeds)
            res = dataclasses.replace(
                merged,
                outputs=[o[rows] for o in merged.outputs],
                age_source=j.age_source,
                batch=j.batch,
                energy_j=energy_j,
                latency_s=latency_s,
            )
            out.append(j.answer(res))
        except Exception as err:
            out.append(err)
    return out


def _alone(job: InferJob[T]) -> T | Exception:
    try:
        return job.answer(dataclasses.replace(_run(job, job.feeds), age_source=job.age_source))
    except Exception as err:
        return err
