"""Prometheus metrics of the service; names and labels follow ``docs/metrics.md`` exactly.

HTTP metrics are ordinary prometheus-client instruments updated by the ASGI middleware in
:mod:`service.middleware`. Everything per chip is produced at scrape time by :class:`ChipCollector`
from the registry (counters kept on each loaded chip, gauges from the background refresher,
read-out cache statistics from the runtimes), so a deleted chip's series disappear with it and
label sets stay bounded by the chips in the store. :class:`ServiceCollector` reports memory
(resident size, budget) and admission (lines per workload, refusals) at scrape time too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.admission import Lanes
from service.chip_gauges import GAUGE_GDC
from service.durations import SCHEDULE
from service.fleets import FleetService
from service.memory import rss_bytes
from service.registry import Registry
from service.served_chip import ServedChip

#: Reasons of admission refusals (label values): the line is full, a request waited its longest,
#: the memory budget has no room for a new read-out.
REJECTION_REASONS = ("queue_full", "queue_timeout", "memory")

PREFIX = "agedchip_"
#: The status recorded for a request whose client left before the answer (nginx's "client closed
#: request"): a 4xx, so that it never feeds the 5xx error-rate alert.
CLIENT_CLOSED = 499
#: Batch sizes (samples, requests): powers of two up to the largest AGEDCHIP_BATCH_MAX_SIZE.
BATCH_BUCKETS = tuple(float(2**k) for k in range(13))
#: Queue delays: around the default AGEDCHIP_BATCH_MAX_QUEUE_DELAY_MS and up to the queue timeout.
QUEUE_DELAY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def status_class(code: int) -> str:
    return f"{code // 100}xx" if 100 <= code < 600 else "5xx"


class ChipCollector(Collector):
    """Per-chip series, read from the registry at each scrape."""

    def __init__(self, registry: Registry):
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        chips = sorted(self.registry.ready(), key=lambda c: c.chip_id)
        counts = self.registry.counts()
        usage, cache, health = _UsageSeries.new(), _CacheSeries.new(), _HealthSeries.new()
        by_state = GaugeMetricFamily(PREFIX + "chips", "Chips in the store by state.", labels=["state"])
        now = time.time()
        for c in chips:
            usage.add(c)
            cache.add(c)
            health.add(c, now)
        for state in ("ready", "corrupt"):
            by_state.add_metric([state], counts.get(state, 0))
        # The exposition order of the families is part of the scrape output: keep it.
        yield from (
            usage.inferences,
            usage.samples,
            health.age,
            health.eval_acc,
            health.cur_acc,
            usage.labelled,
            usage.correct,
            health.alpha,
            health.werr,
            health.gratio,
            health.stuck,
            cache.hits,
            cache.misses,
            cache.cache_bytes,
            cache.cache_entries,
            by_state,
            health.info,
            usage.energy,
            health.breach_in,
        )


@dataclass
class _UsageSeries:
    """Per-chip traffic counters: requests, samples, labelled/correct samples, estimated energy."""

    inferences: CounterMetricFamily
    samples: CounterMetricFamily
    labelled: CounterMetricFamily
    correct: CounterMetricFamily
    energy: CounterMetricFamily

    @classmethod
    def new(cls) -> _UsageSeries:
        inferences = CounterMetricFamily(PREFIX + "inferences", "Inference requests served per chip.", labels=["chip"])
        samples = CounterMetricFamily(
            PREFIX + "inference_samples", "Samples (batch items) inferred per chip.", labels=["chip"]
        )
        # Live accuracy is a PromQL ratio of two counters over a window (docs/metrics.md), so it follows a drop
        # within minutes; a gauge of the running ratio since start would react ever more slowly.
        labelled = CounterMetricFamily(
            PREFIX + "labelled_samples", "Inference samples that came with a label, per chip.", labels=["chip"]
        )
        correct = CounterMetricFamily(
            PREFIX + "correct_samples",
            "Labelled inference samples the chip classified correctly, per chip.",
            labels=["chip"],
        )
        energy = CounterMetricFamily(
            PREFIX + "estimated_energy_joules",
            "Estimated energy of the inferences served per chip, joules (chipsim.cost: "
            "an estimate, not a measurement).",
            labels=["chip"],
        )
        return cls(inferences, samples, labelled, correct, energy)

    def add(self, c: ServedChip) -> None:
        cid = c.chip_id
        n_inf, n_samples, n_lab, n_correct = c.counters()
        self.inferences.add_metric([cid], n_inf)
        self.samples.add_metric([cid], n_samples)
        self.labelled.add_metric([cid], n_lab)
        self.correct.add_metric([cid], n_correct)
        self.energy.add_metric([cid], c.energy_j)


@dataclass
class _CacheSeries:
    """Per-chip read-out cache statistics: hits/misses of the serving runtime, size per runtime."""

    hits: CounterMetricFamily
    misses: CounterMetricFamily
    cache_bytes: GaugeMetricFamily
    cache_entries: GaugeMetricFamily

    @classmethod
    def new(cls) -> _CacheSeries:
        hits = CounterMetricFamily(
            PREFIX + "readout_cache_hits", "Read-out cache hits per chip (serving runtime).", labels=["chip"]
        )
        misses = CounterMetricFamily(
            PREFIX + "readout_cache_misses", "Read-out cache misses per chip (serving runtime).", labels=["chip"]
        )
        cache_bytes = GaugeMetricFamily(
            PREFIX + "readout_cache_bytes",
            "Bytes of cached read-outs per chip and runtime, as the runtime accounts "
            "them (weights only: sessions and arenas are not counted).",
            labels=["chip", "runtime"],
        )
        cache_entries = GaugeMetricFamily(
            PREFIX + "readout_cache_entries",
            "Cached read-outs (ages x read seeds) per chip and runtime.",
            labels=["chip", "runtime"],
        )
        return cls(hits, misses, cache_bytes, cache_entries)

    def add(self, c: ServedChip) -> None:
        cid = c.chip_id
        stats = c.runtime.stats
        self.hits.add_metric([cid], stats.hits)
        self.misses.add_metric([cid], stats.misses)
        for runtime, (n_bytes, n_entries) in c.cache_stats().items():
            self.cache_bytes.add_metric([cid, runtime], n_bytes)
            self.cache_entries.add_metric([cid, runtime], n_entries)


@dataclass
class _HealthSeries:
    """Per-chip description and ageing gauges: age, accuracy, GDC alpha, weight error, stuck devices, SLO."""

    age: GaugeMetricFamily
    eval_acc: GaugeMetricFamily
    cur_acc: GaugeMetricFamily
    alpha: GaugeMetricFamily
    werr: GaugeMetricFamily
    gratio: GaugeMetricFamily
    stuck: GaugeMetricFamily
    info: GaugeMetricFamily
    breach_in: GaugeMetricFamily

    @classmethod
    def new(cls) -> _HealthSeries:
        age = GaugeMetricFamily(
            PREFIX + "chip_age_seconds",
            "Current chip age in seconds: wall-clock age times the chip's time scale.",
            labels=["chip"],
        )
        eval_acc = GaugeMetricFamily(
            PREFIX + "chip_eval_accuracy",
            "Accuracy (ratio) on the chip's eval set at each scheduled age, mean over read-outs.",
            labels=["chip", "age", "gdc"],
        )
        cur_acc = GaugeMetricFamily(
            PREFIX + "chip_current_accuracy",
            "Accuracy (ratio) on the chip's eval set at its current age.",
            labels=["chip", "gdc"],
        )
        alpha = GaugeMetricFamily(
            PREFIX + "chip_gdc_alpha",
            "GDC factor alpha (mean over tiles) at the current age.",
            labels=["chip", "layer"],
        )
        werr = GaugeMetricFamily(
            PREFIX + "chip_weight_error",
            "Relative weight error ||W(t)-W||/||W|| at the current age, with/without GDC.",
            labels=["chip", "gdc"],
        )
        gratio = GaugeMetricFamily(
            PREFIX + "chip_conductance_ratio",
            "Sum of G(t) over sum of G_prog, all devices, at the current age (ratio).",
            labels=["chip"],
        )
        stuck = GaugeMetricFamily(
            PREFIX + "chip_stuck_devices", "Stuck devices per chip by kind.", labels=["chip", "kind"]
        )
        info = GaugeMetricFamily(
            PREFIX + "chip_info", "Chip description (value 1).", labels=["chip", "model", "profile"]
        )
        breach_in = GaugeMetricFamily(
            PREFIX + "chip_slo_breach_in_seconds",
            "Wall-clock seconds until the chip's predicted accuracy SLO breach (GDC on), "
            "from its last evaluation with an SLO; 0 once breached; absent when none is "
            "predicted.",
            labels=["chip"],
        )
        return cls(age, eval_acc, cur_acc, alpha, werr, gratio, stuck, info, breach_in)

    def add(self, c: ServedChip, now: float) -> None:
        """Add chip ``c``'s series; ``now`` is the scrape's wall-clock time (s since the epoch)."""
        cid = c.chip_id
        self.stuck.add_metric([cid, "reset"], c.stuck_reset)
        self.stuck.add_metric([cid, "set"], c.stuck_set)
        self.info.add_metric([cid, c.model_name, c.preset], 1)
        g = c.gauges
        self.age.add_metric([cid], c.wall_age())
        for label in SCHEDULE:
            for mode in GAUGE_GDC:
                v = g.eval_accuracy.get((label, mode))
                if v is not None:
                    self.eval_acc.add_metric([cid, label, mode], v)
        for mode in GAUGE_GDC:
            v = g.current_accuracy.get(mode)
            if v is not None:
                self.cur_acc.add_metric([cid, mode], v)
        for layer, a in g.alpha.items():
            self.alpha.add_metric([cid, layer], a)
        if g.weight_error is not None:
            self.werr.add_metric([cid, "off"], g.weight_error)
        if g.weight_error_gdc is not None:
            self.werr.add_metric([cid, "on"], g.weight_error_gdc)
        if g.g_ratio is not None:
            self.gratio.add_metric([cid], g.g_ratio)
        if g.slo_breach_at is not None:
            self.breach_in.add_metric([cid], max(0.0, g.slo_breach_at - now))


class FleetCollector(Collector):
    """Per-fleet series from each fleet's last successful evaluation, read at each scrape."""

    def __init__(self, fleets: FleetService):
        self.fleets = fleets

    def collect(self) -> Iterator[Metric]:
        yields = GaugeMetricFamily(
            PREFIX + "fleet_yield_ratio",
            "Share of the fleet's chips meeting its accuracy SLO at an age of its last evaluation (ratio).",
            labels=["fleet", "age", "gdc"],
        )
        breach = GaugeMetricFamily(
            PREFIX + "fleet_slo_breach_age_seconds",
            "Chip age by which a percentile of the fleet's chips breached its SLO (GDC on), "
            "seconds; absent when not breached by the last evaluated age.",
            # not `quantile`: Prometheus reserves that label for summaries (promtool check metrics refuses it)
            labels=["fleet", "percentile"],
        )
        ages = GaugeMetricFamily(
            PREFIX + "fleet_eval_age_seconds",
            "Each age label of the fleet's last evaluation as its age in seconds "
            "(the dashboard orders the yield bars by it: the labels sort as text).",
            labels=["fleet", "age"],
        )
        for fleet_id, g in sorted(dict(self.fleets.gauges).items()):
            for (age, gdc), share in g.yield_ratio.items():
                yields.add_metric([fleet_id, age, gdc], share)
            for pct, age_s in g.breach_age_s.items():
                breach.add_metric([fleet_id, pct], age_s)
            for age, age_s in g.age_s.items():
                ages.add_metric([fleet_id, age], age_s)
        yield from (yields, breach, ages)


class ServiceCollector(Collector):
    """Memory and admission, read at each scrape."""

    def __init__(self, registry: Registry, lanes: Lanes):
        self.registry = registry
        self.lanes = lanes

    def collect(self) -> Iterator[Metric]:
        memory = self.registry.memory
        rss = GaugeMetricFamily(PREFIX + "process_resident_memory_bytes", "Resident memory of the service process.")
        rss.add_metric([], rss_bytes())
        budget = GaugeMetricFamily(
            PREFIX + "memory_budget_bytes", "Memory budget new read-outs must fit (AGEDCHIP_MEMORY_BUDGET)."
        )
        budget.add_metric([], memory.budget_bytes)
        inflight = GaugeMetricFamily(
            PREFIX + "workload_inflight", "Requests computing now, per workload.", labels=["workload"]
        )
        queued = GaugeMetricFamily(
            PREFIX + "workload_queued", "Requests waiting in line, per workload.", labels=["workload"]
        )
        rejected = CounterMetricFamily(
            PREFIX + "admission_rejections",
            "Requests refused by admission control (429 full line or wait too long, 503 memory budget).",
            labels=["workload", "reason"],
        )
        for lane in self.lanes.all():
            inflight.add_metric([lane.workload], lane.running)
            queued.add_metric([lane.workload], lane.waiting)
            for reason in REJECTION_REASONS:
                n = memory.rejected.get(lane.workload, 0) if reason == "memory" else lane.rejected.get(reason, 0)
                rejected.add_metric([lane.workload, reason], n)
        yield from (rss, budget, inflight, queued, rejected)


class Metrics:
    """The app's Prometheus registry (one per app, so tests can build several apps)."""

    def __init__(self, registry: Registry, lanes: Lanes, fleets: FleetService | None = None):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            PREFIX + "http_requests_total",
            "HTTP requests served.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            PREFIX + "http_request_duration_seconds",
            "HTTP request latency in seconds.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.disconnects = Counter(
            PREFIX + "client_disconnects_total",
            "Requests whose client left before the answer (recorded with status 499, a 4xx).",
            ["route"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            PREFIX + "batch_size",
            "Samples per dynamic batch of inference requests, /infer and OIP (AGEDCHIP_BATCH_*).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_requests = Histogram(
            PREFIX + "batch_requests",
            "Requests merged per dynamic batch of inference requests (/infer and OIP).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.batch_delay = Histogram(
            PREFIX + "batch_queue_delay_seconds",
            "Wait of an inference request in the dynamic batch queue, from its arrival to its batch's start "
            "(the wait for company and for a free slot), seconds.",
            buckets=QUEUE_DELAY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(ChipCollector(registry))
        self.registry.register(ServiceCollector(registry, lanes))
        if fleets is not None:
            self.registry.register(FleetCollector(fleets))

    def observe_batch(self, samples: int, requests: int, delays_s: Sequence[float]) -> None:
        """A dynamic batch starts: its samples, its requests and each request's queue delay."""
        self.batch_size.observe(samples)
        self.batch_requests.observe(requests)
        for d in delays_s:
            self.batch_delay.observe(d)

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, status_class(status)).inc()
        self.latency.labels(route, method).observe(seconds)
        if status == CLIENT_CLOSED:
            self.disconnects.labels(route).inc()
