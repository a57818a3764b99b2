"""Fleet evaluation: chips × ages × read-outs on the model's eval set, GDC on and off.

The work is split into :class:`EvalTask` s (one per chip, or per chip and group of ages), which
an executor (chipsim.fleet.executors) runs anywhere the store is readable: a task names the
store root, the chip id and the chip's digest; :func:`evaluate_task` loads the chip by id,
checks the digest and returns one :class:`EvalRow` per (age, read-out, GDC on/off).

**Seeds.** Every random draw is a function of (fleet seed, chip index, age, read-out index) and
nothing else: the chip's programming seed is ``chip_seed(fleet seed, index)``; read-out ``r``
uses read seed ``r`` (chipsim's 1/f read-out, keyed by chip seed, read seed, layer and age: each
age is an independent read-out, DESIGN §3.3) and per-MVM noise keyed by (chip seed, ``r``, chunk)
— the seeds ``POST /chips/{id}/evaluate`` uses, so a fleet chip's rows equal that route's
numbers. The per-MVM draws are common to every age and to GDC on and off (a paired comparison).
Each worker runs onnxruntime with
one thread, so rows are bit-identical whichever executor, worker or order ran them.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from chipsim.fleet.breach import BreachStatus, breach_percentile, time_to_breach
from chipsim.fleet.errors import FleetCorruptError, FleetError
from chipsim.fleet.evalset import EVAL_ATTACHMENT, EvalSet, correct_count, load_eval_set
from chipsim.fleet.manifest import Fleet, chip_digest, open_chip_store
from chipsim.fleet.spec import FleetEvalSpec
from chipsim.fleet.stats import PERCENTILES, distribution, yield_summary
from chipsim.modes import GdcMode, SloMetric, WeightBinding
from chipsim.runtime import ChipRuntime
from chipsim.store import ChipStoreError

#: Chips a worker keeps loaded (runtime + eval set) between tasks; only speed depends on it.
WORKER_CACHE_CHIPS = 2
GDC_LABELS = ("on", "off")


@dataclass(frozen=True)
class EvalTask:
    """One unit of work, self-contained and picklable (no chip data: workers fetch it)."""

    store_root: str
    chip_id: str
    digest: str  # chip_digest() recorded in the fleet manifest
    chip_index: int
    ages_s: tuple[float, ...]
    readouts: int  # read seeds 0 … readouts−1
    gdc_on: str  # GdcMode value of the "on" rows
    samples: int | None = None  # first n eval samples (None: all)


@dataclass(frozen=True)
class EvalRow:
    chip_index: int
    chip_id: str
    age_s: float
    readout: int  # = read seed = per-MVM noise key
    gdc: str  # "on" | "off"
    gdc_mode: str  # the GdcMode applied
    correct: int
    samples: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.samples


@dataclass(frozen=True)
class TaskResult:
    rows: tuple[EvalRow, ...]
    load_s: float  # fetching and verifying the chip, building its runtime (0 on a worker-cache hit)
    eval_s: float  # read-outs and inference
    worker: str  # "<host>:<pid>", for benchmarks only: never part of a row


# ----------------------------------------------------------------------------- worker side
_cache: OrderedDict[tuple[str, str, str, int | None], tuple[ChipRuntime, EvalSet]] = OrderedDict()
_cache_lock = threading.Lock()


def _load(task: EvalTask) -> tuple[ChipRuntime, EvalSet]:
    """Fetch the chip by id from a read-only store and check it is the one the fleet recorded.
    Store errors become :class:`FleetCorruptError` (chipsim's store errors do not survive
    pickling between processes, and a changed chip is the fleet's problem)."""
    try:
        store = open_chip_store(task.store_root, read_only=True)
        if chip_digest(store.read_manifest(task.chip_id)) != task.digest:
            raise FleetCorruptError(
                f"fleet: chip {task.chip_id!r} no longer matches the digest recorded when the fleet was programmed",
                "fleet_id",
            )
        chip = store.load(task.chip_id)
        # a delete-and-reprogram under the same id between the two reads would change the digest
        if chip_digest(store.read_manifest(task.chip_id)) != task.digest:
            raise FleetCorruptError(f"fleet: chip {task.chip_id!r} changed while it was loaded", "fleet_id")
    except (ChipStoreError, KeyError, ValueError) as err:
        if isinstance(err, FleetError):
            raise
        raise FleetCorruptError(f"fleet: chip {task.chip_id!r} cannot be loaded: {err}", "fleet_id") from None
    if EVAL_ATTACHMENT not in chip.attachments:
        raise FleetError(f"fleet: chip {task.chip_id!r} has no eval set", "fleet_id")
    # One intra-op thread: the executor's processes are the parallelism, and the serial reference
    # must run the very same kernels. "inputs" binding: ages are one-off, no session per age.
    rt = ChipRuntime(
        chip,
        threads=1,
        binding=WeightBinding.INPUTS,
        cache_entries=2,
        cache_bytes=256 << 20,
    )
    ev = load_eval_set(chip.attachments[EVAL_ATTACHMENT], [i["name"] for i in rt.inputs]).subset(task.samples)
    return rt, ev


def _runtime_for(task: EvalTask) -> tuple[ChipRuntime, EvalSet, bool]:
    key = (task.store_root, task.chip_id, task.digest, task.samples)
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return (*hit, True)
    rt, ev = _load(task)
    with _cache_lock:
        _cache[key] = (rt, ev)
        while len(_cache) > WORKER_CACHE_CHIPS:
            _cache.popitem(last=False)
    return rt, ev, False


def chip_rows(
    rt: ChipRuntime, ev: EvalSet, chip_index: int, ages_s: Sequence[float], readouts: int, gdc_on: str
) -> list[EvalRow]:
    """The rows of one chip (see the module docstring for the seeds)."""
    modes = (GdcMode(gdc_on), GdcMode.OFF)
    rows = []
    for age in ages_s:
        for r in range(readouts):
            for label, mode in zip(GDC_LABELS, modes):
                correct = 0
                # Per-MVM noise seeded with the read seed and keyed by the chunk: the draws of
                # POST /chips/{id}/evaluate (service.served_chip.ServedChip.eval_outputs).
                for chunk, (feeds, labels) in enumerate(ev.chunks()):
                    out = rt.run(feeds, age, read_seed=r, gdc=mode, seed=r, chunk=chunk)[0]
                    correct += correct_count(out, labels)
                rows.append(EvalRow(chip_index, rt.chip.chip_id, float(age), r, label, str(mode), correct, len(ev)))
    return rows


def evaluate_task(task: EvalTask) -> TaskResult:
    """Run one task where it lands (a worker process, a Ray worker, or in-process)."""
    t0 = time.perf_counter()
    rt, ev, hit = _runtime_for(task)
    t1 = time.perf_counter()
    rows = chip_rows(rt, ev, task.chip_index, task.ages_s, task.readouts, task.gdc_on)
    t2 = time.perf_counter()
    return TaskResult(tuple(rows), 0.0 if hit else t1 - t0, t2 - t1, f"{os.uname().nodename}:{os.getpid()}")


# ----------------------------------------------------------------------------- driver side
def gdc_on_mode(fleet: Fleet, spec: FleetEvalSpec) -> GdcMode:
    return GdcMode.resolve(spec.gdc_mode or True, str(fleet.profile.get("gdc", GdcMode.GLOBAL)))


def make_tasks(
    fleet: Fleet, store_root: str | os.PathLike, spec: FleetEvalSpec, ages_per_task: int | None = None
) -> list[EvalTask]:
    """Tasks in chip-major order: one per chip (default), or per chip and ``ages_per_task`` ages.
    The split changes only scheduling, never a row."""
    if ages_per_task is not None and ages_per_task < 1:
        raise FleetError("ages_per_task: must be ≥ 1", "ages_per_task")
    on = str(gdc_on_mode(fleet, spec))
    step = ages_per_task or len(spec.ages_s)
    root = str(os.fspath(store_root))
    return [
        EvalTask(root, c.chip_id, c.digest, c.index, tuple(spec.ages_s[a : a + step]), spec.readouts, on, spec.samples)
        for c in fleet.chips
        for a in range(0, len(spec.ages_s), step)
    ]


def _accuracy_cube(fleet: Fleet, spec: FleetEvalSpec, rows: Sequence[EvalRow]) -> np.ndarray:
    """accuracy[chip, age, read-out, gdc]; every cell exactly once, else an executor bug."""
    n_c, n_a, n_r = len(fleet.chips), len(spec.ages_s), spec.readouts
    acc = np.full((n_c, n_a, n_r, 2), np.nan)
    age_ix = {a: i for i, a in enumerate(spec.ages_s)}
    for row in rows:
        cell = (row.chip_index, age_ix[row.age_s], row.readout, GDC_LABELS.index(row.gdc))
        if not np.isnan(acc[cell]):
            raise RuntimeError(f"executor returned a duplicate row {row}")
        acc[cell] = row.accuracy
    if np.isnan(acc).any():
        raise RuntimeError(f"executor returned {int(np.isnan(acc).sum())} cells too few")
    return acc


def summarise(fleet: Fleet, spec: FleetEvalSpec, rows: Sequence[EvalRow]) -> dict[str, Any]:
    """The evaluation report (a JSON-able dict) from the rows. A chip's value at an age is its
    accuracy averaged over the read-outs; the SLO, yield and breach are judged on it."""
    acc = _accuracy_cube(fleet, spec, rows)
    chip_acc = acc.mean(axis=2)  # (chip, age, gdc)
    readout_std = acc.std(axis=2)  # population std over read-outs, as POST /chips/{id}/evaluate
    fp = fleet.fp_accuracy
    normalised = chip_acc / fp if fp else None
    if spec.slo.metric == SloMetric.NORMALISED_ACCURACY:
        if normalised is None:
            raise FleetError(
                "slo.metric: normalised_accuracy needs the model's FP accuracy on the eval set, "
                "which this fleet does not have",
                "slo.metric",
            )
        metric = normalised
    else:
        metric = chip_acc
    theta = spec.slo.threshold
    on = str(gdc_on_mode(fleet, spec))
    results = []
    for a, age in enumerate(spec.ages_s):
        entry: dict[str, Any] = {"age_s": age}
        for g, label in enumerate(GDC_LABELS):
            stats: dict[str, Any] = {
                "accuracy": distribution(chip_acc[:, a, g]),
                "readout_std_mean": float(readout_std[:, a, g].mean()),
                "yield": yield_summary(metric[:, a, g], theta),
            }
            if normalised is not None:
                stats["normalised_accuracy"] = distribution(normalised[:, a, g])
            entry[f"gdc_{label}"] = stats
        results.append(entry)
    breach: dict[str, Any] = {}
    chips: list[dict[str, Any]] = [{"chip_id": c.chip_id, "index": c.index, "seed": c.seed} for c in fleet.chips]
    for g, label in enumerate(GDC_LABELS):
        times = [time_to_breach(spec.ages_s, metric[c, :, g], theta) for c in range(len(fleet.chips))]
        breach[f"gdc_{label}"] = {
            **{f"chips_{s}": sum(t.status == s for t in times) for s in BreachStatus},
            **{f"p{q}": breach_percentile(times, q).as_dict() for q in PERCENTILES},
        }
        for c, t in enumerate(times):
            chips[c][f"gdc_{label}"] = {
                "accuracy": chip_acc[c, :, g].tolist(),
                "metric": metric[c, :, g].tolist(),
                "breach": t.as_dict(),
            }
    return {
        "fleet_id": fleet.fleet_id,
        "n_chips": len(fleet.chips),
        "seed": fleet.spec.seed,
        "samples": int(rows[0].samples) if rows else 0,
        "readouts": spec.readouts,
        "ages_s": list(spec.ages_s),
        "slo": spec.slo.model_dump(mode="json"),
        "fp_accuracy": fp,
        "gdc_mode": on,
        "results": results,
        "breach": breach,
        "chips": chips,
    }
