"""Prometheus metrics of one coordinator, served at ``GET /metrics``.

Owns: the metric names and labels (``specs/http-api.md`` §"Metrics"), kept in a registry of
their own per coordinator (no module state: two coordinators in one process, as in tests,
do not mix their counts).

Invariants: label values are bounded sets (route templates, not raw paths; models and error
codes that passed validation), so a client cannot grow the series without bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE: Final = CONTENT_TYPE_LATEST
_MAX_CHILDREN: Final = 4096

# Seconds; TTFT through the gateway ranges from ~1 ms (instant engine) to many seconds.
_LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                           30.0, 60.0, 120.0, 300.0)


class Metrics:
    """Every metric the coordinator exports."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter("infernet_http_requests", "HTTP requests by route and status",
                                ["route", "method", "status"], registry=r)
        self.jobs = Counter("infernet_jobs", "Jobs that ended, by model and outcome",
                            ["model", "outcome"], registry=r)
        self.job_latency = Histogram("infernet_job_latency_seconds",
                                     "Job submission to its end", ["model"],
                                     buckets=_LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("infernet_job_ttft_seconds",
                              "Job submission to its first text, as the coordinator saw it",
                              ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("infernet_tokens", "Tokens of completed jobs (engine counts)",
                              ["model", "kind"], registry=r)
        self.requeues = Counter("infernet_job_requeues",
                                "Jobs moved to another node before their first token",
                                registry=r)
        self.rate_limited = Counter("infernet_rate_limited", "Requests refused with 429",
                                    registry=r)
        self.nodes_online = Gauge("infernet_nodes_online", "Nodes online now", registry=r)
        self.queue_depth = Gauge("infernet_queue_depth", "Jobs waiting for a node slot",
                                 registry=r)
        self.jobs_running = Gauge("infernet_jobs_running", "Jobs holding a node slot",
                                  registry=r)
        self.job_streams = Counter("infernet_job_streams",
                                   "Job streams used, pre-opened (pooled) or opened on demand",
                                   ["source"], registry=r)
        self.job_streams_idle = Gauge("infernet_job_streams_idle",
                                      "Pre-opened job streams waiting for a job", registry=r)

    def watch(self, nodes_online: Callable[[], float], queue_depth: Callable[[], float],
              running: Callable[[], float], idle_streams: Callable[[], float] = lambda: 0
              ) -> None:
        """Read the gauges from these callables at each scrape."""
        self.nodes_online.set_function(nodes_online)
        self.queue_depth.set_function(queue_depth)
        self.jobs_running.set_function(running)
        self.job_streams_idle.set_function(idle_streams)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered: prometheus_client validates the labels
        and takes a lock on every call, seven times per job (~15 µs together)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= _MAX_CHILDREN:  # label values are bounded; be sure
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child

    def stream_used(self, pooled: bool) -> None:
        """Count a job stream by where it came from."""
        self._child(self.job_streams, "pooled" if pooled else "opened").inc()

    def request(self, route: str, method: str, status: int) -> None:
        """Count one HTTP response."""
        self._child(self.requests, route, method, str(status)).inc()

    def job_ended(self, model: str, outcome: str, latency_s: float, ttft_s: float | None,
                  prompt_tokens: int = 0, completion_tokens: int = 0) -> None:
        """Record a finished job; ``outcome`` is ``completed`` or the error code."""
        self._child(self.jobs, model, outcome).inc()
        self._child(self.job_latency, model).observe(latency_s)
        if ttft_s is not None:
            self._child(self.ttft, model).observe(ttft_s)
        if prompt_tokens or completion_tokens:
            self._child(self.tokens, model, "prompt").inc(prompt_tokens)
            self._child(self.tokens, model, "completion").inc(completion_tokens)

    def render(self) -> bytes:
        """The text exposition format."""
        return generate_latest(self.registry)
