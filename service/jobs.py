"""Background jobs: a bounded in-memory table and one worker thread per job.

A job is a piece of blocking work (``work(job)`` → its result) that reports progress through
:meth:`Job.progress` and polls :attr:`Job.cancel`. Jobs run in lanes: at most ``concurrency``
jobs of the default lane (programming: recalibration, fleets) run at once, and ``lanes`` names
others with their own limit (``eval``: fleet evaluations); the others wait, cancellable, for a
slot. ``submit(max_unfinished=n)`` refuses a job (Overloaded: 429) when its lane already holds n
unfinished jobs, so a lane's line is bounded like a request lane's. A job ends ``succeeded``,
``cancelled`` (the work raised
:class:`JobCancelled`, or it was cancelled before it started) or ``failed`` (a
:class:`~service.problems.Problem` names the field; anything else is logged and reported as an
internal error). ``on_end`` runs once whatever the outcome (releasing what the job held).

Jobs live in memory (the latest ``max_jobs``; finished ones are evicted first) and are lost on
restart.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.ids import check_job_id
from service.problems import Conflict, NotFound, Overloaded, Problem, Unavailable

log = logging.getLogger("agedchip.service")

#: Jobs kept in memory (finished ones are evicted first, oldest first).
MAX_JOBS = 100
#: Retry-After of a job refused because its lane is full, seconds.
FULL_LANE_RETRY_S = 10.0
DEFAULT_LANE = "default"
FINISHED = frozenset({"succeeded", "failed", "cancelled"})


class JobCancelled(Exception):
    """Raised by a job's work when it noticed the cancel request; nothing was produced."""


@dataclass
class Job:
    job_id: str
    kind: str
    steps: int
    params: dict[str, Any]  # what the job does, shown in its view
    work: Callable[[Job], dict[str, Any]]
    on_end: Callable[[], None]
    failure_note: str = ""  # appended to the message of an internal error
    lane: str = DEFAULT_LANE
    created_at: float = field(default_factory=time.time)
    status: str = "queued"
    step: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def progress(self, step: int, steps: int) -> None:
        self.step = step  # an int assignment is atomic; views read it under the table's lock

    def view(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "kind": self.kind,
            "status": self.status,
            **self.params,
            "cancel_requested": self.cancel.is_set(),
            "progress": {"step": self.step, "steps": self.steps, "fraction": self.step / self.steps},
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "result": self.result,
            "error": self.error,
        }


class JobTable:
    """The jobs of a service: at most ``concurrency`` running at once, ``max_jobs`` remembered."""

    def __init__(self, concurrency: int, max_jobs: int = MAX_JOBS, lanes: dict[str, int] | None = None):
        self.max_jobs = max_jobs
        self._slots = {
            DEFAULT_LANE: threading.Semaphore(concurrency),
            **{name: threading.Semaphore(n) for name, n in (lanes or {}).items()},
        }
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._threads: dict[str, threading.Thread] = {}
        self._closed = False

    # ------------------------------------------------------------------ table
    def submit(
        self,
        kind: str,
        steps: int,
        params: dict[str, Any],
        work: Callable[[Job], dict[str, Any]],
        on_end: Callable[[], None],
        failure_note: str = "",
        lane: str = DEFAULT_LANE,
        max_unfinished: int | None = None,
        limit_setting: str = "",
    ) -> dict[str, Any]:
        """Start a job (queued until a slot of its lane is free); its view. ``on_end`` runs even if it
        cannot start. Overloaded when ``lane`` already holds ``max_unfinished`` unfinished jobs."""
        job = Job(
            job_id=f"job-{secrets.token_hex(8)}",
            kind=kind,
            steps=steps,
            params=params,
            work=work,
            on_end=on_end,
            failure_note=failure_note,
            lane=lane,
        )
        thread = threading.Thread(target=self._run, args=(job,), name=f"{kind}-{job.job_id}", daemon=True)
        with self._lock:
            if self._closed:
                on_end()
                raise Unavailable(None, "the service is shutting down")
            unfinished = sum(1 for j in self._jobs.values() if j.lane == lane and not j.finished)
            if max_unfinished is not None and unfinished >= max_unfinished:
                on_end()
                raise Overloaded(
                    None,
                    f"too many {lane} jobs: {unfinished} queued or running (at most "
                    f"{max_unfinished}, {limit_setting}); retry later",
                    retry_after_s=FULL_LANE_RETRY_S,
                )
            self._jobs[job.job_id] = job
            self._evict()
            self._threads[job.job_id] = thread
            view = job.view()
        try:
            thread.start()
        except Exception:
            with self._lock:
                self._jobs.pop(job.job_id, None)
                self._threads.pop(job.job_id, None)
            on_end()
            raise
        return view

    def _evict(self) -> None:
        """Drop the oldest finished jobs beyond ``max_jobs`` (running ones are bounded by the chip limit)."""
        excess = len(self._jobs) - self.max_jobs
        if excess <= 0:
            return
        for job_id in [j for j, job in self._jobs.items() if job.finished][:excess]:
            del self._jobs[job_id]

    def _get(self, job_id: str) -> Job:
        job = self._jobs.get(check_job_id(job_id))
        if job is None:
            raise NotFound(
                "job_id",
                f"job_id: no job {job_id!r} (jobs are kept in memory: the latest "
                f"{self.max_jobs}, until the service restarts)",
            )
        return job

    def get(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            return self._get(job_id).view()

    def listing(self) -> list[dict[str, Any]]:
        with self._lock:
            return [job.view() for job in reversed(self._jobs.values())]

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Ask a job to stop at its next step. Conflict if it already finished."""
        with self._lock:
            job = self._get(job_id)
            if job.finished:
                raise Conflict(
                    "job_id",
                    f"job_id: job {job_id!r} already {job.status}; nothing to cancel "
                    "(DELETE /chips/{id} removes a chip)",
                )
            job.cancel.set()
            return job.view()

    def shutdown(self, timeout: float = 10.0) -> None:
        """Cancel every job and wait (bounded) for the workers: a stopped service leaves no half chip."""
        with self._lock:
            self._closed = True
            for job in self._jobs.values():
                job.cancel.set()
            threads = list(self._threads.values())
        deadline = time.monotonic() + timeout
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))

    # ------------------------------------------------------------------ worker
    def _set(self, job: Job, **kw: Any) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(job, k, v)

    def _finish(self, job: Job, status: str, **kw: Any) -> None:
        self._set(job, status=status, finished_at=time.time(), **kw)

    def _run(self, job: Job) -> None:
        acquired = False
        try:
            slots = self._slots[job.lane]
            while not (acquired := slots.acquire(timeout=0.2)):
                if job.cancel.is_set():
                    break
            if job.cancel.is_set():
                self._finish(job, "cancelled", error={"message": "cancelled before it started", "field": None})
                return
            self._set(job, status="running", started_at=time.time())
            result = job.work(job)
            self._finish(job, "succeeded", result=result, step=job.steps)
        except JobCancelled as err:
            self._finish(job, "cancelled", error={"message": str(err), "field": None})
        except Problem as err:
            self._finish(job, "failed", error={"message": err.message, "field": err.field})
        except Exception:
            log.exception("%s job %s (%s) failed", job.kind, job.job_id, job.params)
            note = f"; {job.failure_note}" if job.failure_note else ""
            self._finish(
                job,
                "failed",
                error={"message": f"internal error during {job.kind} (logged on the server){note}", "field": None},
            )
        finally:
            job.on_end()
            if acquired:
                self._slots[job.lane].release()
            with self._lock:
                self._threads.pop(job.job_id, None)
