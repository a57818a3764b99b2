"""A served chip's evaluations: its labelled eval set, accuracy at an age, accuracy against age
over several read-outs (POST /chips/{id}/evaluate), the time to SLO breach, drift metrics.

:class:`ChipEvaluation` is a base of :class:`~service.served_chip.ServedChip`, which owns the state
these methods read (the chip, its settings, its evaluation runtime, the age and GDC rules of a
request). Every method is blocking (onnxruntime, numpy): call it from a worker thread. Long
evaluations poll a ``cancelled`` callable between read-outs and chunks (Cancelled).
"""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any

import numpy as np

from chipsim import ChipState, drift_metrics
from chipsim.fleet import BreachTime, breach_from_evaluation, seconds_until_breach
from chipsim.fleet.evalset import EvalSet as FleetEvalSet
from chipsim.fleet.evalset import digital_accuracy
from chipsim.modes import GdcMode, SloMetric
from chipsim.runtime import ChipRuntime
from service.chip_gauges import ChipGauges
from service.datasets import EvalSet, parse_eval_set
from service.problems import Cancelled, Conflict, InvalidField, Problem
from service.settings import Settings

log = logging.getLogger("agedchip.service")

#: The chip attachment holding its labelled eval set (the uploaded ``.npz`` as is).
EVAL_ATTACHMENT = "eval.npz"
#: Samples per onnxruntime call when evaluating (bounds memory for large eval sets).
EVAL_CHUNK = 512
Cancel = Callable[[], bool]


def _cancelled() -> Cancelled:
    return Cancelled(None, "cancelled: nobody waits for the result any more")


class ChipEvaluation(ABC):
    """The evaluation methods of a served chip (see the module docstring for what the host provides)."""

    # The state ServedChip sets in its __init__.
    chip: ChipState
    chip_id: str
    settings: Settings
    runtime: ChipRuntime
    classifier: bool
    time_scale: float
    gauges: ChipGauges
    _eval_set: EvalSet | None
    _fp_accuracy: dict[int, float]  # eval samples used → the FP model's accuracy on them

    # The rules ServedChip implements.
    @property
    @abstractmethod
    def eval_runtime(self) -> ChipRuntime: ...

    @abstractmethod
    def wall_age(self, now: float | None = None) -> float: ...

    @abstractmethod
    def age_of(self, value: Any, field_name: str = "age") -> tuple[float, str]: ...

    @abstractmethod
    def gdc_mode(self, gdc: bool | str | None, field_name: str = "gdc") -> GdcMode: ...

    @abstractmethod
    def new_readout(
        self, rt: ChipRuntime, age_s: float, read_seed: int, field_name: str, workload: str
    ) -> AbstractContextManager[None]: ...

    def eval_set(self) -> EvalSet | None:
        if self._eval_set is None and EVAL_ATTACHMENT in self.chip.attachments:
            try:
                self._eval_set = parse_eval_set(
                    self.chip.attachments[EVAL_ATTACHMENT], [i["name"] for i in self.runtime.inputs], 1 << 62
                )
            except Problem as err:
                log.warning("chip %s: unusable eval set: %s", self.chip_id, err.message)
                return None
        return self._eval_set

    def eval_outputs(
        self,
        eval_set: EvalSet,
        age_s: float,
        read_seed: int,
        gdc: bool | str,
        cancelled: Cancel | None = None,
        rt: ChipRuntime | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """(first sample, first output) of each chunk of ``eval_set`` run at an age, read-out
        ``read_seed``. The per-MVM noise is seeded with the read seed and keyed by the chunk's
        index, so it is reproducible and chunks do not repeat each other's noise. ``cancelled``
        is polled between chunks (Cancelled)."""
        rt = rt or self.eval_runtime
        for chunk, start in enumerate(range(0, len(eval_set), EVAL_CHUNK)):
            if cancelled is not None and cancelled():
                raise _cancelled()
            feeds = {k: v[start : start + EVAL_CHUNK] for k, v in eval_set.feeds.items()}
            yield start, rt.run(feeds, age_s, read_seed=read_seed, gdc=gdc, seed=read_seed, chunk=chunk)[0]

    def accuracy(
        self,
        eval_set: EvalSet,
        age_s: float,
        read_seed: int,
        gdc: bool | str,
        cancelled: Cancel | None = None,
        age_field: str = "age",
        workload: str = "eval",
    ) -> float:
        """Accuracy of the chip on ``eval_set`` at an age, read-out ``read_seed`` (reproducible);
        the read-out is admitted against the memory budget first."""
        rt = self.eval_runtime
        correct = 0
        with self.new_readout(rt, age_s, read_seed, age_field, workload):
            for start, out in self.eval_outputs(eval_set, age_s, read_seed, gdc, cancelled, rt):
                pred = np.asarray(out).reshape(out.shape[0], -1).argmax(axis=1)
                correct += int(np.count_nonzero(pred == eval_set.labels[start : start + len(pred)]))
        return correct / len(eval_set)

    def evaluate(
        self,
        ages: list[Any],
        readouts: int,
        samples: int | None,
        gdc: str | None,
        cancelled: Cancel | None = None,
        slo: tuple[SloMetric, float] | None = None,
    ) -> dict[str, Any]:
        """Accuracy on the eval set at each age, mean ± std over ``readouts`` read-outs (read seeds
        0…n−1), with GDC (``gdc``, default the profile's mode) and without. ``cancelled`` is
        polled before every read-out and chunk: a True stops the work (Cancelled). With ``slo``
        (metric, threshold) the result adds the time to SLO breach (:meth:`slo_breach`)."""
        t0 = time.perf_counter()
        parsed = [(str(a), self.age_of(a, f"ages.{i}")[0]) for i, a in enumerate(ages)]
        limit = self.settings.max_eval_readouts
        if readouts > limit:
            raise InvalidField("readouts", f"readouts: at most {limit} (AGEDCHIP_MAX_EVAL_READOUTS)")
        eval_set = self.eval_set()
        if eval_set is None or not self.classifier:
            why = "has no labelled eval set" if eval_set is None else "is not a classifier"
            raise Conflict(
                "chip_id",
                f"chip_id: chip {self.chip_id!r} {why}; program it with labelled eval data "
                "(multipart field 'eval': .npz with 'x' and integer labels 'y') or from a zoo model "
                "that ships one",
            )
        if samples is not None:
            eval_set = eval_set.subset(samples)
        on_mode = self.gdc_mode(gdc)
        results = []
        for i, (label, age_s) in enumerate(parsed):
            stats = {}
            for key, mode in (("gdc_on", on_mode), ("gdc_off", GdcMode.OFF)):
                vals = []
                for r in range(readouts):
                    if cancelled is not None and cancelled():
                        raise _cancelled()
                    vals.append(self.accuracy(eval_set, age_s, r, mode, cancelled=cancelled, age_field=f"ages.{i}"))
                stats[key] = {
                    "mean": float(np.mean(vals)),
                    "std": float(np.std(vals)),
                    "min": float(min(vals)),
                    "max": float(max(vals)),
                    "values": vals,
                }
            results.append({"age": label, "age_s": age_s, **stats})
        out = {
            "chip_id": self.chip_id,
            "samples": len(eval_set),
            "readouts": readouts,
            "gdc_mode": on_mode,
            "results": results,
        }
        if slo is not None:
            out.update(self.slo_breach(results, eval_set, *slo))
        out["seconds"] = time.perf_counter() - t0
        return out

    def fp_accuracy(self, eval_set: EvalSet) -> float:
        """Accuracy of the chip's floating-point model (no chip) on the first ``len(eval_set)``
        samples: the reference of normalised accuracy. Cached per sample count."""
        n = len(eval_set)
        if n not in self._fp_accuracy:
            model = self.chip.attachments["model.onnx"]
            self._fp_accuracy[n] = digital_accuracy(model, FleetEvalSet(eval_set.feeds, eval_set.labels))
        return self._fp_accuracy[n]

    def slo_breach(
        self, results: list[dict[str, Any]], eval_set: EvalSet, metric: SloMetric, threshold: float
    ) -> dict[str, Any]:
        """Time to SLO breach from evaluation ``results`` (chipsim.fleet.breach: log-age
        interpolation, bracketed), GDC on and off, and the wall-clock seconds until the GDC-on
        breach at the chip's time scale; records the latter for /metrics."""
        if not any(r["age_s"] > 0 for r in results):
            raise InvalidField(
                "ages", "ages: the time to SLO breach interpolates on log-age: evaluate at least one age > 0 s"
            )
        fp = self.fp_accuracy(eval_set) if metric == SloMetric.NORMALISED_ACCURACY else None
        if fp == 0:
            raise InvalidField(
                "slo.metric",
                "slo.metric: the floating-point model scores 0 on the eval set; normalised accuracy is undefined",
            )
        now, age_now = time.time(), self.wall_age()
        breach: dict[str, Any] = {}
        for key in ("gdc_on", "gdc_off"):
            b: BreachTime = breach_from_evaluation(results, threshold, key=key, fp_accuracy=fp)
            until = seconds_until_breach(b, age_now, self.time_scale)
            breach[key] = {**b.as_dict(), "seconds_until": until}
            if key == "gdc_on":
                self.gauges.slo_breach_at = None if until is None else now + until
        return {
            "slo": {"metric": str(metric), "threshold": threshold},
            "fp_accuracy": fp,
            "breach": breach,
            "chip_age_s": age_now,
        }

    def drift(self, age_s: float, read_seed: int = 0, gdc: str | None = None, workload: str = "eval") -> dict[str, Any]:
        mode = self.gdc_mode(gdc)
        rt = self.eval_runtime
        with self.new_readout(rt, age_s, read_seed, "age", workload):
            readout = rt.readout(age_s, read_seed)
        return drift_metrics(self.chip, age_s, read_seed=read_seed, gdc=mode, readout=readout)
