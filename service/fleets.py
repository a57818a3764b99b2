"""Fleets over HTTP: N chips of one model programmed and evaluated as background jobs.

The service stays thin: :mod:`chipsim.fleet` programs, stores (atomically: a fleet is published
whole or not at all), evaluates and summarises; this module validates requests (synchronously,
so bad input is a 4xx naming the field), reserves the fleet's chip ids in the registry, runs the
work as jobs (:mod:`service.jobs`: progress, cancel; programming in the default lane with the
programming limits, evaluation in the ``eval`` lane with the evaluation limits, both refused with
429 when their lane is full) and keeps the last evaluation's figures for /metrics.

**Restarts.** :meth:`FleetService.open` opens the fleet store, which rolls back every fleet whose
writer died before publishing (its chips are deleted); ``service.app`` calls it before loading
chips, so a rolled-back chip is never served. Jobs live in memory: a restart forgets them. A
programming job cut short leaves no fleet (rolled back on the next start); an evaluation job
publishes nothing but its result and the fleet's gauges, set in one assignment at its end, so an
interrupted one changes nothing. On shutdown every job is cancelled (``JobTable.shutdown``).

**Chips of a fleet** are ordinary chips (``<fleet>-000`` …), served by every chip route, but
deleted only with their fleet: ``DELETE /chips/{id}`` answers 409 naming the fleet.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from chipsim.fleet import (
    FleetCancelled,
    FleetError,
    FleetEvalSpec,
    FleetNotFoundError,
    FleetSpec,
    FleetStore,
    LocalProcessExecutor,
    evaluate_fleet,
    program_fleet,
)
from chipsim.fleet.executors import Executor
from chipsim.modes import SloMetric
from service.durations import DurationError, parse_age
from service.fleet_gauges import FleetGauges, fleet_gauges
from service.jobs import Job, JobCancelled, JobTable
from service.problems import Conflict, InvalidField, NotFound, Problem, fleet_problem
from service.registry import Registry
from service.schemas import FleetEvaluateRequest, FleetProgramRequest
from service.settings import Settings

log = logging.getLogger("agedchip.service")

PROGRAM_KIND, EVALUATE_KIND = "fleet_program", "fleet_evaluate"
EVAL_LANE = "eval"


# ----------------------------------------------------------------------------------- the service
class FleetService:
    """The fleets of one service; thread-safe. :meth:`open` before the registry loads chips."""

    def __init__(self, registry: Registry, settings: Settings, jobs: JobTable):
        self.registry, self.settings, self.jobs = registry, settings, jobs
        self._store: FleetStore | None = None
        self._lock = threading.Lock()
        self._busy: dict[str, str] = {}  # fleet id → the job programming or evaluating it
        self.gauges: dict[str, FleetGauges] = {}

    # ------------------------------------------------------------------ set-up
    def open(self) -> None:
        """Open the fleet store, which rolls back (deletes the chips of) every fleet whose writer died
        before publishing it; then the registry may load chips."""
        # a read-only replica lists published fleets and never writes (no roll-back: the writer's job)
        self._store = FleetStore(self.registry.store, read_only=self.registry.read_only)
        self.registry.owner_of = self.owner_of

    @property
    def store(self) -> FleetStore:
        if self._store is None:
            raise RuntimeError("FleetService.open() was not called")
        return self._store

    def executor(self) -> Executor:
        """A fresh executor for one evaluation: Ray at AGEDCHIP_RAY_ADDRESS, else local processes."""
        workers = self.settings.fleet_workers or None
        if self.settings.ray_address:
            from chipsim.fleet.ray_executor import RayExecutor  # ray is an optional extra

            return RayExecutor(address=self.settings.ray_address, workers=workers)
        return LocalProcessExecutor(workers)

    # ------------------------------------------------------------------ queries
    def owner_of(self, chip_id: str) -> str | None:
        """The fleet (published, or being programmed or deleted) a chip belongs to, if any."""
        try:
            tag = self.registry.store.read_manifest(chip_id).get("meta", {}).get("fleet")
        except Exception:  # no such chip, or unreadable: the registry's delete handles it
            return None
        fid = tag.get("id") if isinstance(tag, dict) else None
        try:
            return fid if isinstance(fid, str) and self.store.exists(fid) else None
        except FleetError:
            return None

    def listing(self) -> list[dict[str, Any]]:
        out = []
        for item in self.store.list():
            f = item.fleet
            out.append(
                {
                    "fleet_id": item.fleet_id,
                    "state": item.status,
                    "model": f.spec.model_name if f else None,
                    "n_chips": f.spec.n_chips if f else None,
                    "seed": f.spec.seed if f else None,
                    "error": item.error,
                }
            )
        return out

    def get(self, fleet_id: str) -> dict[str, Any]:
        try:
            fleet = self.store.get(fleet_id)
        except FleetNotFoundError as err:
            if self._pending(fleet_id):
                raise NotFound("fleet_id", f"fleet_id: fleet {fleet_id!r} is still being programmed") from None
            raise fleet_problem(err) from None
        except FleetError as err:
            raise fleet_problem(err) from None
        m = fleet.to_manifest()
        return {
            "fleet_id": fleet.fleet_id,
            "state": "ready",
            "model": {"name": fleet.spec.model_name, "digest": fleet.model_digest},
            "profile": {"preset": fleet.spec.preset, "overrides": fleet.spec.overrides, "values": fleet.profile},
            "n_chips": len(fleet.chips),
            "seed": fleet.spec.seed,
            "time_scale": fleet.spec.time_scale,
            "fp_accuracy": fleet.fp_accuracy,
            "eval_samples": fleet.eval_samples,
            "created_at": fleet.created_at,
            "programming_s": fleet.programming_s,
            "chips": m["chips"],
        }

    def _pending(self, fleet_id: str) -> bool:
        try:
            return self.store.marker_path(fleet_id).exists()
        except FleetError:
            return False

    # ------------------------------------------------------------------ jobs
    def _claim(self, fleet_id: str, what: str) -> None:
        with self._lock:
            if fleet_id in self._busy:
                raise Conflict(
                    "fleet_id",
                    f"fleet_id: fleet {fleet_id!r} has a job running ({self._busy[fleet_id]}); "
                    f"wait for it or cancel it (DELETE /jobs/{{job_id}}) before {what}",
                )
            self._busy[fleet_id] = "starting"

    def _unclaim(self, fleet_id: str) -> None:
        with self._lock:
            self._busy.pop(fleet_id, None)

    def _submit(
        self,
        kind: str,
        fleet_id: str,
        steps: int,
        request: dict[str, Any],
        work: Any,
        on_end: Any,
        lane: str,
        limit: int,
        setting: str,
    ) -> dict[str, Any]:
        view = self.jobs.submit(
            kind,
            steps,
            {"fleet_id": fleet_id, "request": request},
            work,
            on_end=on_end,
            failure_note="nothing was published",
            lane=lane,
            max_unfinished=limit,
            limit_setting=setting,
        )
        with self._lock:
            if self._busy.get(fleet_id) == "starting":
                self._busy[fleet_id] = view["job_id"]
        return view

    def submit_program(self, req: FleetProgramRequest) -> dict[str, Any]:
        """Validate a POST /fleets request, reserve its chip ids and start the job (blocking: a worker thread)."""
        self.registry.require_writer("program fleets", allow=("GET",))
        zoo = self.registry.zoo
        zoo.check_name(req.model)
        try:
            spec = FleetSpec.parse(
                {
                    "fleet_id": req.fleet_id,
                    "model_name": req.model,
                    "preset": req.profile,
                    "overrides": req.overrides,
                    "n_chips": req.n_chips,
                    "seed": req.seed,
                    "time_scale": req.time_scale,
                }
            )
            profile = spec.profile()
        except FleetError as err:
            raise _spec_problem(err) from None
        model_bytes, eval_bytes = zoo.model_bytes(req.model), zoo.eval_bytes(req.model)
        self.registry.inputs.check_cost(model_bytes, profile, tile_rows_given="tile_rows" in req.overrides)
        if self.store.exists(spec.fleet_id):
            raise Conflict("fleet_id", f"fleet_id: fleet {spec.fleet_id!r} already exists or is being programmed")
        self._claim(spec.fleet_id, "programming it")
        reserved: list[str] = []
        try:
            for chip_id in spec.chip_ids():
                reserved.append(self.registry.reserve(chip_id, "fleet_id"))
        except Problem:
            for chip_id in reserved:
                self.registry.release(chip_id)
            self._unclaim(spec.fleet_id)
            raise

        def on_end() -> None:
            for chip_id in reserved:
                self.registry.release(chip_id)
            self._unclaim(spec.fleet_id)

        def work(job: Job) -> dict[str, Any]:
            try:
                program_fleet(
                    self.registry.store,
                    spec,
                    model_bytes,
                    eval_bytes,
                    fleets=self.store,
                    meta={"model_source": "zoo", "service": "agedchip"},
                    progress=job.progress,
                    cancel=job.cancel,
                )
            except FleetCancelled as err:
                raise JobCancelled(f"{err}; no chip was kept") from None
            except FleetError as err:
                raise fleet_problem(err) from None
            for chip_id in spec.chip_ids():  # published: serve its chips
                self.registry.load(chip_id)
            log.info(
                "programmed fleet %s: %d chips of %s (%s, seed %d)",
                spec.fleet_id,
                spec.n_chips,
                req.model,
                req.profile,
                req.seed,
            )
            return self.get(spec.fleet_id)

        s = self.settings
        return self._submit(
            PROGRAM_KIND,
            spec.fleet_id,
            spec.n_chips,
            req.model_dump(mode="json"),
            work,
            on_end,
            lane="default",
            limit=s.program_concurrency + s.max_queue_program,
            setting="AGEDCHIP_PROGRAM_CONCURRENCY + AGEDCHIP_MAX_QUEUE_PROGRAM",
        )

    def submit_evaluate(self, fleet_id: str, req: FleetEvaluateRequest) -> dict[str, Any]:
        """Validate a POST /fleets/{id}/evaluate request and start the job (blocking: a worker thread)."""
        try:
            fleet = self.store.get(fleet_id)
        except FleetError as err:
            raise fleet_problem(err) from None
        ages_s = []
        for i, age in enumerate(req.ages):
            try:
                ages_s.append(parse_age(age, f"ages.{i}"))
            except DurationError as err:
                raise InvalidField(f"ages.{i}", str(err)) from None
        limit = self.settings.max_eval_readouts
        if req.readouts > limit:
            raise InvalidField("readouts", f"readouts: at most {limit} (AGEDCHIP_MAX_EVAL_READOUTS)")
        try:
            spec = FleetEvalSpec.parse(
                {
                    "ages_s": ages_s,
                    "readouts": req.readouts,
                    "slo": req.slo.model_dump(),
                    "gdc_mode": req.gdc_mode,
                    "samples": req.samples,
                }
            )
        except FleetError as err:
            raise _spec_problem(err) from None
        if fleet.eval_samples == 0:
            raise Conflict(
                "fleet_id",
                f"fleet_id: fleet {fleet_id!r} has no labelled eval set (its zoo model ships "
                "none); it cannot be evaluated",
            )
        if spec.slo.metric == SloMetric.NORMALISED_ACCURACY and not fleet.fp_accuracy:
            raise InvalidField(
                "slo.metric",
                "slo.metric: normalised_accuracy needs the model's floating-point "
                "accuracy, which this fleet does not have",
            )
        self._claim(fleet_id, "evaluating it again")

        def work(job: Job) -> dict[str, Any]:
            executor = self.executor()
            try:
                report = evaluate_fleet(self.store, fleet, spec, executor, progress=job.progress, cancel=job.cancel)
            except FleetCancelled as err:
                raise JobCancelled(str(err)) from None
            except FleetError as err:
                raise fleet_problem(err) from None
            finally:
                executor.close()
            if job.cancel.is_set():
                raise JobCancelled("cancelled after the evaluation; nothing was published")
            report["ages"] = [str(a) for a in req.ages]
            self.gauges[fleet_id] = fleet_gauges(report)  # one assignment: the figures change whole
            return report

        request = {**req.model_dump(mode="json"), "ages_s": list(spec.ages_s)}
        s = self.settings
        return self._submit(
            EVALUATE_KIND,
            fleet_id,
            len(fleet.chips),
            request,
            work,
            lambda: self._unclaim(fleet_id),
            lane=EVAL_LANE,
            limit=s.eval_concurrency + s.max_queue_eval,
            setting="AGEDCHIP_EVAL_CONCURRENCY + AGEDCHIP_MAX_QUEUE_EVAL",
        )

    # ------------------------------------------------------------------ delete
    def delete(self, fleet_id: str) -> None:
        """Unpublish the fleet (atomic), then delete its chips (blocking). Conflict while a job runs on it."""
        self.registry.require_writer("delete fleets", allow=("GET",))
        self._claim(fleet_id, "deleting it")
        try:
            if self._pending(fleet_id):
                raise Conflict("fleet_id", f"fleet_id: fleet {fleet_id!r} is being programmed or deleted")
            try:
                fleet = self.store.get(fleet_id)
                self.store.delete(fleet_id)
            except FleetError as err:
                raise fleet_problem(err) from None
            self.gauges.pop(fleet_id, None)
            for chip in fleet.chips:  # gone from the store: the registry forgets them
                try:
                    self.registry.delete(chip.chip_id)
                except NotFound:
                    pass
            log.info("deleted fleet %s (%d chips)", fleet_id, len(fleet.chips))
        finally:
            self._unclaim(fleet_id)


def _spec_problem(err: FleetError) -> Problem:
    """A spec's validation error: chipsim names its own fields (model_name, preset); the request's differ."""
    renamed = {"model_name": "model", "preset": "profile"}
    f = err.field or ""
    if f == "profile.name":  # chipsim's ProfileError for an unknown preset: the request's `profile`
        return InvalidField("profile", str(err))
    head, _, rest = f.partition(".")
    if head in renamed:
        return InvalidField(renamed[head] + (f".{rest}" if rest else ""), str(err).replace(head, renamed[head], 1))
    return fleet_problem(err)
