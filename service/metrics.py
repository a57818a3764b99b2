"""Prometheus metrics of the service; names and labels follow ``docs/metrics.md`` exactly.

HTTP metrics are ordinary prometheus-client instruments updated by the ASGI middleware in
:mod:`service.middleware`. Everything per chip is produced at scrape time by :class:`ChipCollector`
from the registry (counters kept on each loaded chip, gauges from the background refresher,
read-out cache statistics from the runtime), so a deleted chip's series disappear with it and
label sets stay bounded by the chips in the store.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.durations import SCHEDULE
from service.registry import Registry
from service.served_chip import GAUGE_GDC

PREFIX = "agedchip_"
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

        inferences = CounterMetricFamily(PREFIX + "inferences", "Inference requests served per chip.", labels=["chip"])
        samples = CounterMetricFamily(PREFIX + "inference_samples",
                                      "Samples (batch items) inferred per chip.", labels=["chip"])
        labelled = CounterMetricFamily(PREFIX + "chip_live_labelled_samples",
                                       "Labelled inference samples received per chip.", labels=["chip"])
        hits = CounterMetricFamily(PREFIX + "readout_cache_hits", "Read-out cache hits per chip (serving runtime).",
                                   labels=["chip"])
        misses = CounterMetricFamily(PREFIX + "readout_cache_misses",
                                     "Read-out cache misses per chip (serving runtime).", labels=["chip"])
        age = GaugeMetricFamily(PREFIX + "chip_age_seconds",
                                "Current chip age in seconds: wall-clock age times the chip's time scale.",
                                labels=["chip"])
        eval_acc = GaugeMetricFamily(
            PREFIX + "chip_eval_accuracy",
            "Accuracy (ratio) on the chip's eval set at each scheduled age, mean over read-outs.",
            labels=["chip", "age", "gdc"])
        cur_acc = GaugeMetricFamily(PREFIX + "chip_current_accuracy",
                                    "Accuracy (ratio) on the chip's eval set at its current age.",
                                    labels=["chip", "gdc"])
        live_acc = GaugeMetricFamily(PREFIX + "chip_live_accuracy",
                                     "Accuracy (ratio) of labelled inference requests since the server started.",
                                     labels=["chip"])
        alpha = GaugeMetricFamily(PREFIX + "chip_gdc_alpha", "GDC factor alpha (mean over tiles) at the current age.",
                                  labels=["chip", "layer"])
        werr = GaugeMetricFamily(PREFIX + "chip_weight_error",
                                 "Relative weight error ||W(t)-W||/||W|| at the current age, with/without GDC.",
                                 labels=["chip", "gdc"])
        gratio = GaugeMetricFamily(PREFIX + "chip_conductance_ratio",
                                   "Sum of G(t) over sum of G_prog, all devices, at the current age (ratio).",
                                   labels=["chip"])
        stuck = GaugeMetricFamily(PREFIX + "chip_stuck_devices", "Stuck devices per chip by kind.",
                                  labels=["chip", "kind"])
        info = GaugeMetricFamily(PREFIX + "chip_info", "Chip description (value 1).",
                                 labels=["chip", "model", "profile"])
        by_state = GaugeMetricFamily(PREFIX + "chips", "Chips in the store by state.", labels=["state"])

        for c in chips:
            cid = c.chip_id
            n_inf, n_samples, n_lab, n_correct = c.counters()
            inferences.add_metric([cid], n_inf)
            samples.add_metric([cid], n_samples)
            labelled.add_metric([cid], n_lab)
            if n_lab:
                live_acc.add_metric([cid], n_correct / n_lab)
            stats = c.runtime.stats
            hits.add_metric([cid], stats.hits)
            misses.add_metric([cid], stats.misses)
            stuck.add_metric([cid, "reset"], c.stuck_reset)
            stuck.add_metric([cid, "set"], c.stuck_set)
            info.add_metric([cid, c.model_name, c.preset], 1)
            g = c.gauges
            age.add_metric([cid], c.wall_age())
            for label in SCHEDULE:
                for mode in GAUGE_GDC:
                    v = g.eval_accuracy.get((label, mode))
                    if v is not None:
                        eval_acc.add_metric([cid, label, mode], v)
            for mode in GAUGE_GDC:
                v = g.current_accuracy.get(mode)
                if v is not None:
                    cur_acc.add_metric([cid, mode], v)
            for layer, a in g.alpha.items():
                alpha.add_metric([cid, layer], a)
            if g.weight_error is not None:
                werr.add_metric([cid, "off"], g.weight_error)
            if g.weight_error_gdc is not None:
                werr.add_metric([cid, "on"], g.weight_error_gdc)
            if g.g_ratio is not None:
                gratio.add_metric([cid], g.g_ratio)
        for state in ("ready", "corrupt"):
            by_state.add_metric([state], counts.get(state, 0))
        yield from (inferences, samples, age, eval_acc, cur_acc, live_acc, labelled, alpha, werr, gratio, stuck,
                    hits, misses, by_state, info)


class Metrics:
    """The app's Prometheus registry (one per app, so tests can build several apps)."""

    def __init__(self, registry: Registry):
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(PREFIX + "http_requests_total", "HTTP requests served.",
                                ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram(PREFIX + "http_request_duration_seconds", "HTTP request latency in seconds.",
                                 ["route", "method"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(ChipCollector(registry))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, status_class(status)).inc()
        self.latency.labels(route, method).observe(seconds)
