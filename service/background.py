"""The background refresher: keeps each chip's drift and accuracy gauges current.

Every ``AGEDCHIP_REFRESH_SECONDS`` it refreshes the next ``AGEDCHIP_REFRESH_MAX_CHIPS`` ready chips
(round robin, so its CPU per period is bounded however many chips there are), one chip at a
time on its own worker thread, never in the lines requests wait in. Before each chip it yields
to requests: while any request waits in line or an evaluation or drift request runs, it waits
(at most ``MAX_DEFER_S``, so that gauges are never staler than that under sustained load). For
each chip it computes:

- the chip's current age (wall-clock age × time scale);
- the drift metrics at that age (read seed 0): GDC α per layer, weight error with and without
  GDC, the conductance ratio;
- the accuracy at that age with GDC on and off, on the first ``AGEDCHIP_REFRESH_EVAL_SAMPLES``
  samples of the chip's eval set (read seed 0);
- once per chip (a chip is immutable, so the numbers never change): the accuracy at the fixed
  schedule 1s, 1h, 1d, 1w, 30d, 1y, 10y, mean over ``AGEDCHIP_SCHEDULE_READOUTS`` read-outs.

Its CPU over time is bounded by ``AGEDCHIP_REFRESH_CPU_SHARE``: a pass that computed for ``b``
seconds is followed by a wait of at least ``b·(1/share − 1)`` (a chip's age moves on between
passes, so each pass reads it out afresh: a resnet18 chip costs seconds per pass).

Failures are logged and never stop the loop or the server; a chip whose read-out does not fit
the memory budget is skipped until the next pass.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import anyio
import numpy as np

from service.admission import Lanes
from service.chip_gauges import GAUGE_GDC
from service.durations import SCHEDULE
from service.problems import Cancelled, Unavailable
from service.registry import Registry
from service.served_chip import ServedChip
from service.settings import Settings

log = logging.getLogger("agedchip.service")
#: Longest the refresher defers a chip to requests, seconds.
MAX_DEFER_S = 60.0
#: How often it looks whether requests still wait, seconds.
YIELD_POLL_S = 0.05
#: The workload its memory refusals are counted under (not a request line).
WORKLOAD = "refresh"


def pause_s(period_s: float, elapsed_s: float, busy_s: float, cpu_share: float) -> float:
    """Seconds to wait after a pass that took ``elapsed_s`` (``busy_s`` of them computing):
    the rest of the period, and at least what keeps the computing share at ``cpu_share``."""
    return max(0.5, period_s - elapsed_s, busy_s * (1.0 / cpu_share - 1.0))


class Refresher:
    def __init__(self, registry: Registry, settings: Settings, lanes: Lanes | None = None):
        self.registry = registry
        self.settings = settings
        self.lanes = lanes
        self.runs = 0
        self.chips_refreshed = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._cursor = 0
        self._thread = anyio.CapacityLimiter(1)
        #: Seconds the last pass spent refreshing chips (its waits for requests not counted).
        self.last_busy_s = 0.0

    # ------------------------------------------------------------------ one chip
    def refresh_chip(self, chip: ServedChip) -> None:
        s = self.settings
        age = chip.wall_age()
        g = chip.gauges
        stop = self._stop.is_set
        m = chip.drift(age, read_seed=0, workload=WORKLOAD)
        g.alpha = {layer["name"]: layer["alpha_mean"] for layer in m["layers"]}
        g.weight_error, g.weight_error_gdc, g.g_ratio = m["weight_error"], m["weight_error_gdc"], m["g_ratio"]
        g.age_s = age
        eval_set = chip.eval_set()
        if eval_set is not None and chip.classifier:
            subset = eval_set.subset(s.refresh_eval_samples)
            g.current_accuracy = {
                label: chip.accuracy(subset, age, 0, gdc, cancelled=stop, workload=WORKLOAD)
                for label, gdc in GAUGE_GDC.items()
            }
            if not g.eval_accuracy:
                acc: dict[tuple[str, str], float] = {}
                for label, age_s in SCHEDULE.items():
                    if self._stop.is_set():
                        return
                    for mode, gdc in GAUGE_GDC.items():
                        acc[(label, mode)] = float(
                            np.mean(
                                [
                                    chip.accuracy(subset, age_s, r, gdc, cancelled=stop, workload=WORKLOAD)
                                    for r in range(s.schedule_readouts)
                                ]
                            )
                        )
                g.eval_accuracy = acc
        g.refreshed_at = time.time()

    def next_chips(self) -> list[ServedChip]:
        """The next ``refresh_max_chips`` ready chips, round robin by chip id."""
        chips = sorted(self.registry.ready(), key=lambda c: c.chip_id)
        if not chips:
            return []
        n = min(self.settings.refresh_max_chips, len(chips))
        start = self._cursor % len(chips)
        self._cursor = start + n
        return [chips[(start + i) % len(chips)] for i in range(n)]

    def _refresh(self, chip: ServedChip) -> None:
        """One chip; errors are logged, never raised."""
        try:
            self.refresh_chip(chip)
            self.chips_refreshed += 1
        except Cancelled:
            pass
        except Unavailable as err:  # the memory budget: try again next pass
            log.info("refresh of chip %s skipped: %s", chip.chip_id, err.message)
        except Exception as err:  # never let one chip break the loop
            self.last_error = f"{chip.chip_id}: {type(err).__name__}: {err}"
            log.warning("refresh of chip %s failed", chip.chip_id, exc_info=True)

    def refresh_once(self) -> None:
        """Refresh the next chips now, in this thread (blocking)."""
        for chip in self.next_chips():
            if self._stop.is_set():
                return
            self._refresh(chip)
        self.runs += 1

    # ------------------------------------------------------------------ the loop
    def requests_waiting(self) -> bool:
        """Whether a request waits in line, or an evaluation or drift request runs."""
        if self.lanes is None:
            return False
        return any(lane.waiting for lane in self.lanes.all()) or self.lanes.eval.running > 0

    async def _yield_to_requests(self) -> None:
        deadline = time.monotonic() + MAX_DEFER_S
        while self.requests_waiting() and time.monotonic() < deadline and not self._stop.is_set():
            await anyio.sleep(YIELD_POLL_S)

    async def run_pass(self) -> None:
        """Refresh the next chips, one worker-thread call per chip, yielding to requests before each."""
        self.last_busy_s = 0.0
        for chip in self.next_chips():
            await self._yield_to_requests()
            if self._stop.is_set():
                return
            t0 = time.monotonic()
            await anyio.to_thread.run_sync(self._refresh, chip, limiter=self._thread)
            self.last_busy_s += time.monotonic() - t0
        self.runs += 1

    async def run(self) -> None:
        period = self.settings.refresh_seconds
        if period <= 0:
            return
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                await self.run_pass()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gauge refresh failed")
            elapsed = time.monotonic() - t0
            await asyncio.sleep(pause_s(period, elapsed, self.last_busy_s, self.settings.refresh_cpu_share))

    def stop(self) -> None:
        self._stop.set()
