"""The process's memory: its resident size, its limit, and the budget new read-outs must fit.

A read-out at a new age costs far more than the weights the runtime's cache counts: onnxruntime
builds a session per cached age (``initializers`` binding) whose prepacked weights and arena stay
resident. :class:`MemoryGuard` admits the computation of a new read-out only while the process's
resident size, plus the read-outs being computed, plus this one's estimated cost fits the budget
(``AGEDCHIP_MEMORY_BUDGET``); otherwise it first asks the registry to drop what can be rebuilt
(the evaluation runtimes), then refuses with :class:`~service.problems.Unavailable` and a
``Retry-After``. Read-outs already cached are always served: they cost nothing new.

The estimate is the read-out's own increment over the resident size the check already reads (the
chip's state, 12-15 B/weight, is in it): a fixed part plus a part per analog weight, measured
(``FIXED_BYTES``, ``BYTES_PER_WEIGHT``). The runtime's cache charges
an entry with a session 2.3x its arrays (``chipsim.runtime.SESSION_CHARGE``, calibrated on the
same measurement), so its per-chip bounds (``AGEDCHIP_CACHE_BYTES``) cover sessions too; when the
budget is short the registry evicts every chip's cached read-outs but its newest.
"""

from __future__ import annotations

import os
import resource
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from service.problems import Unavailable

#: The default budget's share of the memory limit: the rest is headroom for what the check does
#: not see (parsed request bodies, a batch's activations, a chip being compiled and programmed).
DEFAULT_BUDGET_SHARE = 0.75
#: Measured increments are multiplied by this before they become the estimate. Not for noise:
#: repeated runs agree within 0.1 % (the peaks at the first new age of resnet18, the 10M and
#: 100M MLPs, bench/results/scale.json at d71d6fb and now). For what the rows do not vary: they
#: are batch 1, and ``python -m bench.serving_costs``'s 4M-weight chip grew 14 % more at batch
#: 1024 than at batch 1 on its first new age (32.6 vs 28.5 B/weight, 'inputs').
SAFETY_MARGIN = 1.15
#: Peak resident bytes one read-out at a new age adds over the RSS just before it, by weight
#: binding: ``FIXED_BYTES[b] + BYTES_PER_WEIGHT[b]`` × analog weights.
#: 'inputs': ``python -m bench.scale`` (bench/results/scale.json, batch 1, 'pcm'; peak RSS at the
#: first new age minus the RSS just before it): resnet18 24.5 B/weight (286 MB), 10M MLP 20.8
#: (208 MB), 100M MLP 20.3 (2.03 GB); for the 250M and 500M MLPs, which predate that column,
#: peak minus (RSS before programming + 12 B/weight: the chip's devices and float32 target
#: weights; the three rows above grew 12.3-14.7 B/weight while programming) bounds it: 20.3 and
#: 20.3 B/weight. Slope: the largest of the 100M-500M rows (20.3 B) × SAFETY_MARGIN → 24 B; fixed
#: part: what the rows need beyond it, resnet18's 286 − 20.3 × 11.7M = 49 MB, × SAFETY_MARGIN
#: → 64 MiB.
#: tests/test_memory_estimate.py checks every row against it. It also covers the 4M-weight chip
#: of ``python -m bench.serving_costs``: 163 MB, over its largest growth per new age, 142 MB
#: (35.4 B/weight, batch 1024).
#: 'initializers' (a session per age; no scale.json row binds so: ``python -m
#: bench.serving_costs``, a 2000×2000 MatMul, 1-4 new ages, batch 1 and 1024): the largest RSS
#: growth, 57.6-77.4 B/weight, rounded up (the runtime's cache charged 49-62 % of it before
#: SESSION_CHARGE).
BYTES_PER_WEIGHT = {"initializers": 80, "inputs": 24}
FIXED_BYTES = {"initializers": 0, "inputs": 64 << 20}
#: Suggested wait when refused: memory frees when requests in flight finish and evaluation
#: runtimes are dropped, which is a matter of seconds.
RETRY_AFTER_S = 5.0
_CGROUP_LIMITS = (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"))


def rss_bytes() -> int:
    """The process's resident set size, bytes (``/proc/self/statm``; elsewhere the peak RSS)."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if os.uname().sysname == "Darwin" else peak * 1024  # macOS: bytes, Linux: KiB


def physical_memory() -> int:
    """Physical memory of the machine, bytes (8 GiB when the OS does not say)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, AttributeError):
        return 8 << 30


def memory_limit() -> int:
    """The memory this process may use, bytes: its cgroup's limit (v2, then v1) when one is set
    below the physical memory, else the physical memory."""
    physical = physical_memory()
    for path in _CGROUP_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit() and 0 < int(text) < physical:
            return int(text)
    return physical


def readout_cost(n_weights: int, binding: str) -> int:
    """Estimated peak bytes one read-out at a new age of a chip of ``n_weights`` analog weights
    adds to the process's resident size (the chip already in it), in a runtime with weight
    ``binding`` ('initializers' or 'inputs'; another: the larger of both)."""
    if binding not in BYTES_PER_WEIGHT:
        return max(readout_cost(n_weights, b) for b in BYTES_PER_WEIGHT)
    return FIXED_BYTES[binding] + int(n_weights) * BYTES_PER_WEIGHT[binding]


class MemoryGuard:
    """Admission of new read-outs against the budget; thread-safe.

    ``relieve``: called once before refusing, to drop what can be rebuilt (it may take a while);
    ``rss``: the resident-size probe (a parameter so tests can feed one)."""

    def __init__(
        self, budget_bytes: int, relieve: Callable[[], None] | None = None, rss: Callable[[], int] = rss_bytes
    ):
        self.budget_bytes = budget_bytes
        self.relieve = relieve
        self.rss = rss
        self.pending_bytes = 0  # estimated cost of the read-outs being computed
        self.rejected: dict[str, int] = {}  # workload → refusals
        self._lock = threading.Lock()

    def _fits(self, cost: int) -> bool:
        return self.rss() + self.pending_bytes + cost <= self.budget_bytes

    @contextmanager
    def reserve(self, cost: int, field: str, workload: str) -> Iterator[None]:
        """Hold ``cost`` bytes of the budget while a new read-out is computed, or refuse with
        :class:`Unavailable` naming ``field`` (the age that needs the read-out)."""
        with self._lock:
            fits = self._fits(cost)
        if not fits and self.relieve is not None:
            self.relieve()
        with self._lock:
            if not self._fits(cost):
                self.rejected[workload] = self.rejected.get(workload, 0) + 1
                used, pending = self.rss(), self.pending_bytes
                raise Unavailable(
                    field,
                    f"{field}: a read-out at a new age needs about {cost / 2**20:.0f} MiB; the "
                    f"process uses {used / 2**20:.0f} MiB (+{pending / 2**20:.0f} MiB being computed) "
                    f"of its {self.budget_bytes / 2**20:.0f} MiB budget (AGEDCHIP_MEMORY_BUDGET). Ages "
                    "already read out are still served; retry later",
                    retry_after_s=RETRY_AFTER_S,
                )
            self.pending_bytes += cost
        try:
            yield
        finally:
            with self._lock:
                self.pending_bytes -= cost
