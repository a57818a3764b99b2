"""The dynamic batcher's queueing (service.batching) with a real admission lane and a fake runner:
which requests merge, when batches start, error isolation, cancellation, overload."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.admission import Lane
from service.batching import BatchConfig, BatchConfigError, Batcher
from service.problems import Overloaded


class Recorder:
    """A runner that records its batches; an item ``"boom"`` fails alone, ``"crash"`` fails the run."""

    def __init__(self, hold: threading.Event | None = None):
        self.batches: list[list[object]] = []
        self.hold = hold

    def __call__(self, items: list[object]) -> list[object]:
        if self.hold is not None:
            self.hold.wait(10)
        self.batches.append(list(items))
        if "crash" in items:
            raise RuntimeError("the runner broke")
        return [ValueError(f"bad item {i}") if i == "boom" else f"done {i}" for i in items]


def make(config: BatchConfig, inflight: int = 2, queue: int = 64, timeout_s: float = 30.0, hold=None):
    lane = Lane("infer", inflight, queue, timeout_s, "AGEDCHIP_MAX_QUEUE_INFER")
    run = Recorder(hold)
    seen: list[tuple[int, int, list[float]]] = []
    batcher = Batcher(config, lane, run, lambda s, r, d: seen.append((s, r, list(d))))
    return lane, batcher, run, seen


async def submit(lane: Lane, batcher: Batcher, key: object, item: object, size: int = 1) -> object:
    async with lane.ticket() as ticket:
        return await batcher.submit(key, item, size, ticket)


async def gather(lane, batcher, pairs) -> list[object]:
    """Submit (key, item) pairs at once; results or exceptions in order."""
    return await asyncio.gather(*(submit(lane, batcher, k, i) for k, i in pairs), return_exceptions=True)


# ------------------------------------------------------------------------------ configuration
@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(max_queue_delay_s=-0.001, max_size=8), "max_queue_delay_s"),
        (dict(max_queue_delay_s=1.5, max_size=8), "max_queue_delay_s"),
        (dict(max_queue_delay_s=0, max_size=0), "max_size"),
        (dict(max_queue_delay_s=0, max_size=8, preferred_sizes=(4, 16)), "preferred_sizes"),
        (dict(max_queue_delay_s=0, max_size=8, preferred_sizes=(0,)), "preferred_sizes"),
        (dict(max_queue_delay_s=0, max_size=8, preferred_sizes=(4, 2)), "preferred_sizes"),
        (dict(max_queue_delay_s=0, max_size=8, preferred_sizes=(4, 4)), "preferred_sizes"),
    ],
)
def test_config_refuses_bad_values(kw, field):
    with pytest.raises(BatchConfigError) as e:
        BatchConfig(**kw)
    assert e.value.field == field


def test_config_target_and_limit():
    c = BatchConfig(0.002, 16, (4, 8))
    assert c.enabled and c.target == 8
    assert [c.limit(n) for n in (1, 3, 4, 7, 8, 20)] == [16, 16, 4, 4, 8, 8]
    assert BatchConfig(0.002, 16).target == 16
    assert not BatchConfig(0.002, 1).enabled


# ------------------------------------------------------------------------------ merging
def test_requests_of_one_key_merge_and_keys_never_mix():
    async def main():
        lane, batcher, run, seen = make(BatchConfig(1.0, 4))
        t0 = time.monotonic()
        out = await gather(lane, batcher, [("a", 1), ("b", 2), ("a", 3), ("b", 4), ("a", 5), ("a", 6)])
        return out, run.batches, seen, time.monotonic() - t0, lane

    out, batches, seen, seconds, lane = asyncio.run(main())
    assert out == [f"done {i}" for i in (1, 2, 3, 4, 5, 6)]
    # key "a" filled a batch of 4 at once; key "b" (2 requests) waited the 1 s delay
    assert sorted(map(sorted, batches)) == [[1, 3, 5, 6], [2, 4]]
    assert sorted((s, r) for s, r, _ in seen) == [(2, 2), (4, 4)]
    assert 0.9 <= seconds < 5.0  # the delay, plus slack for a loaded 2-core host
    assert (lane.waiting, lane.running) == (0, 0)


def test_full_batch_starts_without_waiting_for_the_delay():
    async def main():
        lane, batcher, run, seen = make(BatchConfig(1.0, 3))
        t0 = time.monotonic()
        await gather(lane, batcher, [("k", i) for i in range(3)])
        return time.monotonic() - t0, run.batches

    seconds, batches = asyncio.run(main())
    assert batches == [[0, 1, 2]]
    assert seconds < 0.5  # far below the 1 s delay: the full batch did not wait


def test_a_lone_request_waits_the_delay_and_no_longer():
    delay = 0.2

    async def main():
        lane, batcher, run, seen = make(BatchConfig(delay, 8))
        t0 = time.monotonic()
        await submit(lane, batcher, "k", 1)
        return time.monotonic() - t0, seen

    seconds, seen = asyncio.run(main())
    (samples, requests, (waited,)) = seen[0]
    assert (samples, requests) == (1, 1)
    # at least the delay (it waited for company); at most the delay plus 0.5 s of scheduling slack
    assert delay <= waited < delay + 0.5 and seconds < delay + 1.0


def test_preferred_size_starts_a_batch_and_bounds_its_size():
    async def main():
        lane, batcher, run, seen = make(BatchConfig(0.3, 8, (2,)), inflight=1)
        await gather(lane, batcher, [("k", i) for i in range(5)])
        return run.batches

    batches = asyncio.run(main())
    assert [len(b) for b in batches] == [2, 2, 1]  # the last one waited the delay alone
    assert sorted(i for b in batches for i in b) == list(range(5))


def test_sizes_count_samples_not_requests():
    async def main():
        lane, batcher, run, seen = make(BatchConfig(0.05, 8))
        await asyncio.gather(*(submit(lane, batcher, "k", i, size=3) for i in range(4)))
        return run.batches, seen

    batches, seen = asyncio.run(main())
    assert all(3 * len(b) <= 8 for b in batches) and sum(map(len, batches)) == 4
    assert max(s for s, _, _ in seen) == 6


# ------------------------------------------------------------------------------ isolation
def test_a_failing_member_fails_alone_and_a_failing_run_fails_its_batch_only():
    async def main():
        lane, batcher, run, seen = make(BatchConfig(1.0, 3))
        first = await gather(lane, batcher, [("k", 1), ("k", "boom"), ("k", 3)])
        second = await gather(lane, batcher, [("k", 4), ("k", "crash"), ("k", 6)])
        third = await gather(lane, batcher, [("k", 7), ("k", 8), ("k", 9)])
        return first, second, third, lane

    first, second, third, lane = asyncio.run(main())
    assert first[0] == "done 1" and first[2] == "done 3"
    assert isinstance(first[1], ValueError) and "boom" in str(first[1])
    assert all(isinstance(r, RuntimeError) for r in second)
    assert third == ["done 7", "done 8", "done 9"]  # the batcher serves on after a broken run
    assert (lane.waiting, lane.running) == (0, 0)


def test_a_member_that_leaves_the_queue_is_not_run_and_the_others_are():
    async def main():
        lane, batcher, run, seen = make(BatchConfig(0.3, 8))
        tasks = [asyncio.create_task(submit(lane, batcher, "k", i)) for i in range(3)]
        await asyncio.sleep(0.05)
        tasks[1].cancel()  # its client left while it waited for company
        out = await asyncio.gather(*tasks, return_exceptions=True)
        return out, run.batches, lane

    out, batches, lane = asyncio.run(main())
    assert out[0] == "done 0" and out[2] == "done 2" and isinstance(out[1], asyncio.CancelledError)
    assert batches == [[0, 2]]
    assert (lane.waiting, lane.running) == (0, 0)


def test_a_member_that_leaves_a_running_batch_does_not_disturb_it():
    hold = threading.Event()

    async def main():
        lane, batcher, run, seen = make(BatchConfig(1.0, 3), hold=hold)
        tasks = [asyncio.create_task(submit(lane, batcher, "k", i)) for i in range(3)]
        while not lane.running:
            await asyncio.sleep(0.01)
        tasks[0].cancel()  # the batch runs in a worker thread: the others still get their results
        hold.set()
        return await asyncio.gather(*tasks, return_exceptions=True), lane

    out, lane = asyncio.run(main())
    assert isinstance(out[0], asyncio.CancelledError) and out[1:] == ["done 1", "done 2"]
    assert (lane.waiting, lane.running) == (0, 0)


# ------------------------------------------------------------------------------ overload
def test_a_request_that_waits_too_long_for_a_slot_gets_429_and_the_line_recovers():
    async def main():
        lane, batcher, run, seen = make(BatchConfig(0.0, 8), inflight=1, timeout_s=0.3)
        started = await lane.acquire_slot()  # another job holds the only slot
        t0 = time.monotonic()
        out = await gather(lane, batcher, [("k", 1), ("k", 2)])
        seconds = time.monotonic() - t0
        lane.release_slot(started)
        after = await submit(lane, batcher, "k", 3)
        return out, seconds, after, lane

    out, seconds, after, lane = asyncio.run(main())
    assert all(isinstance(r, Overloaded) for r in out)
    assert seconds < 2.0  # each waited its 0.3 s timeout at most (slack for a loaded host)
    assert after == "done 3"
    assert lane.rejected.get("queue_timeout") == 2
    assert (lane.waiting, lane.running) == (0, 0)


def test_the_batch_queue_counts_against_the_lanes_line():
    hold = threading.Event()

    async def main():
        lane, batcher, run, seen = make(BatchConfig(0.0, 2), inflight=1, queue=2, hold=hold)
        tasks = [asyncio.create_task(submit(lane, batcher, "k", i)) for i in range(2)]
        while not lane.running:  # one batch of 2 runs (held), counted once
            await asyncio.sleep(0.01)
        tasks += [asyncio.create_task(submit(lane, batcher, "k", i)) for i in (2, 3)]
        while lane.waiting < 2:
            await asyncio.sleep(0.01)
        with pytest.raises(Overloaded):  # 1 running batch + 2 queued members: the line is full
            async with lane.ticket():
                pass
        hold.set()
        return await asyncio.gather(*tasks), run.batches

    out, batches = asyncio.run(main())
    assert out == ["done 0", "done 1", "done 2", "done 3"]
    assert batches == [[0, 1], [2, 3]]


def test_a_failing_observer_fails_no_request():
    def broken(samples, requests, delays):
        raise RuntimeError("metrics broke")

    async def main():
        lane = Lane("infer", 1, 8, 5.0, "AGEDCHIP_MAX_QUEUE_INFER")
        batcher = Batcher(BatchConfig(0.0, 4), lane, Recorder(), broken)
        out = await gather(lane, batcher, [("k", 1), ("k", 2)])
        return out, lane

    out, lane = asyncio.run(main())
    assert out == ["done 1", "done 2"]
    assert (lane.waiting, lane.running) == (0, 0)
