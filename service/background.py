"""The background refresher: keeps each chip's drift and accuracy gauges current.

Every ``AGEDCHIP_REFRESH_SECONDS`` it computes, for each ready chip, in a worker thread:

- the chip's current age (wall-clock age × time scale);
- the drift metrics at that age (read seed 0): GDC α per layer, weight error with and without
  GDC, the conductance ratio;
- the accuracy at that age with GDC on and off, on the first ``AGEDCHIP_REFRESH_EVAL_SAMPLES``
  samples of the chip's eval set (read seed 0);
- once per chip (a chip is immutable, so the numbers never change): the accuracy at the fixed
  schedule 1s, 1h, 1d, 1w, 30d, 1y, 10y, mean over ``AGEDCHIP_SCHEDULE_READOUTS`` read-outs.

Failures are logged and never stop the loop or the server.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import anyio
import numpy as np

from service.durations import SCHEDULE
from service.registry import Registry
from service.served_chip import GAUGE_GDC, ServedChip
from service.settings import Settings

log = logging.getLogger("agedchip.service")


class Refresher:
    def __init__(self, registry: Registry, settings: Settings, limiter: anyio.CapacityLimiter | None = None):
        self.registry = registry
        self.settings = settings
        self.limiter = limiter
        self.runs = 0
        self.last_error: str | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ one chip
    def refresh_chip(self, chip: ServedChip) -> None:
        s = self.settings
        age = chip.wall_age()
        g = chip.gauges
        m = chip.drift(age, read_seed=0)
        g.alpha = {layer["name"]: layer["alpha_mean"] for layer in m["layers"]}
        g.weight_error, g.weight_error_gdc, g.g_ratio = m["weight_error"], m["weight_error_gdc"], m["g_ratio"]
        g.age_s = age
        eval_set = chip.eval_set()
        if eval_set is not None and chip.classifier:
            subset = eval_set.subset(s.refresh_eval_samples)
            g.current_accuracy = {label: chip.accuracy(subset, age, 0, gdc) for label, gdc in GAUGE_GDC.items()}
            if not g.eval_accuracy:
                acc: dict[tuple[str, str], float] = {}
                for label, age_s in SCHEDULE.items():
                    if self._stop.is_set():
                        return
                    for mode, gdc in GAUGE_GDC.items():
                        acc[(label, mode)] = float(np.mean(
                            [chip.accuracy(subset, age_s, r, gdc) for r in range(s.schedule_readouts)]))
                g.eval_accuracy = acc
        g.refreshed_at = time.time()

    def refresh_once(self) -> None:
        """Refresh every ready chip; errors are per chip and only logged."""
        for chip in self.registry.ready():
            if self._stop.is_set():
                return
            try:
                self.refresh_chip(chip)
            except Exception as err:  # never let one chip break the loop
                self.last_error = f"{chip.chip_id}: {type(err).__name__}: {err}"
                log.warning("refresh of chip %s failed", chip.chip_id, exc_info=True)
        self.runs += 1

    # ------------------------------------------------------------------ the loop
    async def run(self) -> None:
        period = self.settings.refresh_seconds
        if period <= 0:
            return
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                await anyio.to_thread.run_sync(self.refresh_once, limiter=self.limiter)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gauge refresh failed")
            await asyncio.sleep(max(0.5, period - (time.monotonic() - t0)))

    def stop(self) -> None:
        self._stop.set()
