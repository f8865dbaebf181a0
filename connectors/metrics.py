"""Prometheus metrics of one daemon instance, in a registry of its own (several apps can live in one process)."""
from __future__ import annotations

from typing import Any, Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily


class _QueueCollector:
    """Queue depth by state, read from the database at scrape time (the queue is shared by all instances)."""

    def __init__(self, depth: Callable[[], Mapping[str, int]]):
        self.depth = depth

    def collect(self):
        family = GaugeMetricFamily("triage_queue_jobs", "Jobs in the durable queue, by state", labels=["state"])
        try:
            depth = self.depth()
        except Exception:  # a scrape must not fail because the database blinked
            depth = {}
        for state in ("queued", "running", "done", "dead"):
            family.add_metric([state], float(depth.get(state, 0)))
        yield family


class Metrics:
    def __init__(self, depth: Callable[[], Mapping[str, int]]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.webhooks_received = Counter("triage_webhooks_received_total", "Webhooks received", ["connector"],
                                         registry=r)
        self.webhooks_refused = Counter("triage_webhooks_refused_total", "Webhooks refused, by HTTP status",
                                        ["connector", "status"], registry=r)
        self.webhooks_duplicate = Counter("triage_webhooks_duplicate_total",
                                          "Webhook events acknowledged as already received", ["connector"],
                                          registry=r)
        self.triage_latency = Histogram("triage_latency_seconds", "Time to triage one ticket (model only)",
                                        buckets=(0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32), registry=r)
        self.writebacks = Counter("triage_writebacks_total", "Write-backs by outcome", ["connector", "outcome"],
                                  registry=r)
        self.corrections = Counter("triage_corrections_total", "Human changes to fields the daemon wrote",
                                   ["connector", "field"], registry=r)
        self.model_info = Gauge("triage_model_info", "The model serving triage (value 1)", ["base", "adapter"],
                                registry=r)
        r.register(_QueueCollector(depth))

    def set_model(self, info: Mapping[str, Any]) -> None:
        self.model_info.clear()
        self.model_info.labels(base=str(info.get("base")), adapter=str(info.get("adapter") or "none")).set(1)
