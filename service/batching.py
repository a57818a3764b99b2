"""Dynamic batching, as Triton's dynamic batcher: requests that may share one run wait briefly in
a queue per key, and run together as one job of an admission lane.

A key names everything that decides a request's outputs besides its samples (for inference,
/infer and OIP alike: the chip, age, read seed, GDC mode and input signature,
:mod:`service.batched_infer`); requests of
one key are merged, never requests of different keys. Per key, one dispatcher task forms a batch
and hands it to the lane:

1. it waits until the queued samples reach the target (the largest preferred size, else the
   largest batch) or the oldest request has waited ``max_queue_delay_s``;
2. it takes a slot of the lane (:meth:`Lane.acquire_slot`), waiting at most what is left of the
   oldest request's ``queue_timeout_s``: past that, that request gets 429 (Overloaded) and the
   next one leads; so no request waits without bound;
3. only now, with the slot, it takes the batch from the head of the queue: the largest preferred
   size the queue holds, else everything up to ``max_size`` samples (requests that arrived while
   it waited for the slot ride along: under load, batches fill by themselves);
4. the batch runs in a worker thread of the lane in a task of its own, so the dispatcher forms
   the next batch meanwhile (as many batches run at once as the lane has slots).

Members hold admission tickets (:meth:`Lane.ticket`): while queued they count as waiting in the
lane's line, so a full line answers 429 before a request is even parsed; a running batch counts
as one computing job (one slot), whatever its size. The run function returns one
result or exception per member, so a failing member fails alone; a member whose client left
is dropped from the queue, or its result from a running batch, without touching the others.
Pure queueing: no HTTP, no chips; the event loop's asyncio primitives, anyio for time-outs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio

from service.admission import Lane, Ticket

log = logging.getLogger("agedchip.service")

#: Runs a batch's items (in a worker thread): one result, or the exception it raised, per item.
RunBatch = Callable[[list[Any]], list[Any]]
#: Sees every batch as it starts: its samples, its requests and each request's wait, seconds.
BatchObserver = Callable[[int, int, Sequence[float]], None]


class BatchConfigError(ValueError):
    """An invalid batching configuration; ``field`` names the offending setting."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class BatchConfig:
    """How long a request may wait for company, and how large batches grow (in samples)."""

    max_queue_delay_s: float
    max_size: int
    preferred_sizes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not 0 <= self.max_queue_delay_s <= 1.0:
            raise BatchConfigError("max_queue_delay_s", "max_queue_delay_s must be in [0, 1] s")
        if self.max_size < 1:
            raise BatchConfigError("max_size", "max_size must be >= 1 (1 = no batching)")
        bad = [p for p in self.preferred_sizes if not 1 <= p <= self.max_size]
        if bad:
            raise BatchConfigError("preferred_sizes", f"preferred sizes {bad} are not in [1, max_size={self.max_size}]")
        if list(self.preferred_sizes) != sorted(set(self.preferred_sizes)):
            raise BatchConfigError("preferred_sizes", "preferred sizes must be increasing, without repeats")

    @property
    def enabled(self) -> bool:
        return self.max_size > 1

    @property
    def target(self) -> int:
        """Queued samples at which a batch starts without waiting for the delay."""
        return self.preferred_sizes[-1] if self.preferred_sizes else self.max_size

    def limit(self, queued: int) -> int:
        """Samples to take from a queue holding ``queued``: the largest preferred size it holds,
        else up to ``max_size``."""
        fits = [p for p in self.preferred_sizes if p <= queued]
        return fits[-1] if fits else self.max_size


@dataclass(eq=False)
class _Pending:
    item: Any
    size: int
    ticket: Ticket
    enqueued: float  # time.monotonic()
    result: asyncio.Future


@dataclass(eq=False)
class _Queue:
    items: deque[_Pending] = field(default_factory=deque)
    samples: int = 0
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    dispatcher: asyncio.Task | None = None

    def remove(self, p: _Pending) -> bool:
        try:
            self.items.remove(p)
        except ValueError:
            return False
        self.samples -= p.size
        return True

    def take(self, limit: int) -> list[_Pending]:
        """The head, and the requests after it while they fit in ``limit`` samples."""
        batch = [self.items.popleft()]
        total = batch[0].size
        while self.items and total + self.items[0].size <= limit:
            batch.append(self.items.popleft())
            total += batch[-1].size
        self.samples -= total
        return batch


class Batcher:
    """Dynamic batches of one lane's requests. :meth:`submit` from the event loop."""

    def __init__(self, config: BatchConfig, lane: Lane, run: RunBatch, observe: BatchObserver | None = None):
        self.config, self.lane, self._run, self._observe = config, lane, run, observe
        self._queues: dict[Hashable, _Queue] = {}
        self._running: set[asyncio.Task] = set()

    async def submit(self, key: Hashable, item: Any, size: int, ticket: Ticket) -> Any:
        """``item``'s result once its batch has run (its exception re-raised); ``size`` is its
        samples, ``ticket`` its place in the lane's line (admitted when its batch starts).
        Overloaded (429) when it waited ``queue_timeout_s`` for a slot."""
        q = self._queues.get(key)
        if q is None:
            q = self._queues[key] = _Queue()
        p = _Pending(item, size, ticket, time.monotonic(), asyncio.get_running_loop().create_future())
        q.items.append(p)
        q.samples += size
        q.changed.set()
        if q.dispatcher is None:
            q.dispatcher = asyncio.create_task(self._dispatch(key, q))
        try:
            return await p.result
        except asyncio.CancelledError:  # the client left: give up its place, if it still has one
            if q.remove(p):
                q.changed.set()
            raise

    # ------------------------------------------------------------------ dispatch
    async def _dispatch(self, key: Hashable, q: _Queue) -> None:
        try:
            while q.items:
                await self._formed(q)
                if not q.items:
                    break
                head = q.items[0]
                try:
                    started = await self.lane.acquire_slot(head.enqueued + self.lane.timeout_s - time.monotonic())
                except Exception as err:  # Overloaded: the head waited its longest; the next one leads
                    if q.remove(head) and not head.result.done():
                        head.result.set_exception(err)
                    continue
                if not q.items:  # every member left while we waited for the slot
                    self.lane.release_slot(started)
                    continue
                batch = q.take(self.config.limit(q.samples))
                for p in batch:
                    self.lane.admit(p.ticket)  # computing now: off the line, the slot counts for them
                task = asyncio.create_task(self._execute(batch, started))
                self._running.add(task)
                task.add_done_callback(self._running.discard)
        except BaseException as err:  # a bug, or the shutdown: no request may be left waiting for ever
            if not isinstance(err, asyncio.CancelledError):
                log.exception("dynamic batcher failed")
            for p in q.items:
                _settle(p, err)
            q.items.clear()
            q.samples = 0
            raise
        finally:
            q.dispatcher = None
            if self._queues.get(key) is q and not q.items:
                del self._queues[key]

    async def _formed(self, q: _Queue) -> None:
        """Return once the queue holds the target or its oldest request waited the delay."""
        while q.items and q.samples < self.config.target:
            left = q.items[0].enqueued + self.config.max_queue_delay_s - time.monotonic()
            if left <= 0:
                return
            q.changed.clear()
            with anyio.move_on_after(left):
                await q.changed.wait()

    async def _execute(self, batch: list[_Pending], started: float) -> None:
        """Run one batch in a worker thread of the lane, holding the slot taken for it."""
        try:
            if self._observe is not None:
                self._observe(sum(p.size for p in batch), len(batch), [time.monotonic() - p.enqueued for p in batch])
        except Exception:  # metrics must not fail requests
            log.exception("dynamic batch observer failed")
        try:
            results = await self.lane.to_thread(self._run, [p.item for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} requests returned {len(results)} results")
        except Exception as err:  # the runner itself failed: every member learns it
            results = [err] * len(batch)
        except BaseException as err:  # cancelled (shutdown): nobody is left waiting
            for p in batch:
                _settle(p, err)
            raise
        finally:
            self.lane.release_slot(started)
        for p, r in zip(batch, results):
            _settle(p, r)


def _settle(p: _Pending, result: Any) -> None:
    """Give a member its result (or exception); one whose client left has none to get."""
    if p.result.done():
        return
    if isinstance(result, BaseException):
        if isinstance(result, Exception):
            p.result.set_exception(result)
        else:
            p.result.cancel()
    else:
        p.result.set_result(result)
