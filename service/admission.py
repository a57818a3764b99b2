"""Admission control: a bounded line per workload (inference, evaluation/drift, programming).

A :class:`Lane` runs at most ``inflight`` blocking jobs at once in worker threads and lets at
most ``queue`` more wait; a request beyond that, or one that waited ``timeout_s``, is refused at
once with :class:`~service.problems.Overloaded` (429) and a ``Retry-After`` estimated from the
lane's recent service times. Nothing waits without bound, so an overload shows as fast 429s
instead of minutes of latency. A request takes its place in line (:meth:`Lane.ticket`) before it
reads its body, so what waiting requests hold in memory is bounded as well.

The lanes are async (anyio) and know nothing of HTTP.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from service.problems import Overloaded

T = TypeVar("T")
#: Weight of the latest job in the running mean of service times.
EWMA_WEIGHT = 0.2
MAX_RETRY_AFTER_S = 60.0


class Lane:
    """One workload's line. ``setting`` names the queue's setting in messages."""

    def __init__(self, workload: str, inflight: int, queue: int, timeout_s: float, setting: str):
        self.workload, self.inflight, self.queue, self.timeout_s, self.setting = (
            workload,
            inflight,
            queue,
            timeout_s,
            setting,
        )
        self._slots = anyio.Semaphore(inflight)
        # Worker threads of this lane; never contended (a job holds a slot first), but keeps the
        # lane's jobs off anyio's shared default pool of 40 threads.
        self._threads = anyio.CapacityLimiter(inflight)
        self.waiting = 0  # in line: holding a ticket, no slot yet (reading a body, or queued)
        self.running = 0
        self.rejected: dict[str, int] = {}  # reason ('queue_full', 'queue_timeout') → count
        self.mean_s = 0.0  # running mean of service times, seconds

    # ------------------------------------------------------------------ state
    @property
    def busy(self) -> bool:
        return self.waiting > 0 or self.running > 0

    def retry_after_s(self) -> float:
        """Time for the line ahead to drain, from the recent mean service time (at least 1 s)."""
        ahead = self.waiting + self.running
        return min(MAX_RETRY_AFTER_S, max(1.0, self.mean_s * ahead / self.inflight))

    def _refuse(self, reason: str, message: str) -> Overloaded:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        return Overloaded(None, message, retry_after_s=self.retry_after_s())

    # ------------------------------------------------------------------ admission
    @asynccontextmanager
    async def ticket(self) -> AsyncIterator[Ticket]:
        """A place in line, or Overloaded at once when the line is full; :meth:`Ticket.run` then
        waits for a slot (at most ``timeout_s``) and runs the job."""
        if self.waiting + self.running >= self.inflight + self.queue:
            raise self._refuse(
                "queue_full",
                f"too many {self.workload} requests: {self.running} running, "
                f"{self.waiting} waiting (at most {self.queue}, {self.setting}); "
                "retry later",
            )
        self.waiting += 1
        ticket = Ticket(self)
        try:
            yield ticket
        finally:
            if not ticket.admitted:
                self.waiting -= 1

    async def acquire_slot(self, timeout_s: float | None = None) -> float:
        """Wait for a slot, at most ``timeout_s`` (never more than the lane's timeout; then
        Overloaded), and hold it until :meth:`release_slot` with the returned start time
        (``time.monotonic()``). A dynamic batch (:mod:`service.batching`) takes one slot for all
        its members, and :meth:`admit` s each of their tickets."""
        wait_s = self.timeout_s if timeout_s is None else max(0.0, min(timeout_s, self.timeout_s))
        with anyio.move_on_after(wait_s) as scope:
            await self._slots.acquire()
        if scope.cancelled_caught:
            raise self._refuse(
                "queue_timeout",
                f"{self.workload} request waited {self.timeout_s:g} s in line "
                "(AGEDCHIP_QUEUE_TIMEOUT_S) without a free slot; retry later",
            )
        self.running += 1
        return time.monotonic()

    def admit(self, ticket: Ticket) -> None:
        """Count a ticket's request as computing, in a slot acquired for it (or for its batch)."""
        if ticket.admitted:
            raise RuntimeError("a ticket runs one job")
        ticket.admitted = True
        self.waiting -= 1

    def release_slot(self, started: float) -> None:
        self._release(time.monotonic() - started)

    async def to_thread(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in one of this lane's worker threads (the caller holds a slot)."""
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._threads)

    def _release(self, seconds: float) -> None:
        self.running -= 1
        self._slots.release()
        self.mean_s = seconds if self.mean_s == 0 else (1 - EWMA_WEIGHT) * self.mean_s + EWMA_WEIGHT * seconds


@dataclass
class Ticket:
    lane: Lane
    admitted: bool = False

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Wait for a slot, then run ``fn(*args)`` in a worker thread (once per ticket)."""
        lane = self.lane
        if self.admitted:
            raise RuntimeError("a ticket runs one job")
        started = await lane.acquire_slot()
        lane.admit(self)
        try:
            return await lane.to_thread(fn, *args)
        finally:
            lane.release_slot(started)


@dataclass(frozen=True)
class Lanes:
    """The lanes of a service, one per workload."""

    infer: Lane
    eval: Lane
    program: Lane

    def all(self) -> tuple[Lane, ...]:
        return self.infer, self.eval, self.program


def lanes_for(
    infer_inflight: int,
    eval_inflight: int,
    program_inflight: int,
    infer_queue: int,
    eval_queue: int,
    program_queue: int,
    timeout_s: float,
) -> Lanes:
    return Lanes(
        infer=Lane("infer", infer_inflight, infer_queue, timeout_s, "AGEDCHIP_MAX_QUEUE_INFER"),
        eval=Lane("eval", eval_inflight, eval_queue, timeout_s, "AGEDCHIP_MAX_QUEUE_EVAL"),
        program=Lane("program", program_inflight, program_queue, timeout_s, "AGEDCHIP_MAX_QUEUE_PROGRAM"),
    )
