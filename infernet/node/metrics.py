"""Job accounting and the node's Prometheus metrics.

Owns: `JobTracker`, which wraps the executor's `JobRunner` to count every inbound job by
outcome, total tokens and TTFT from the frames the node sends (so the engine path, the relay
path and refusals are counted in one place, without hooks in the executor), to refuse new
jobs while the node drains, and to let the drain wait until no job is in flight; and
`NodeMetrics`, a per-node `CollectorRegistry` (no global state) exposed on ``GET /metrics``.

Outcomes: ``completed`` (a final frame after our own ``accepted``), ``relayed`` (a final
frame after another node's ``accepted``), ``failed`` (an error frame after ``accepted``),
``refused`` (an error frame before it: unknown model, no free slot, draining) and
``cancelled`` (the client left or the node stopped before a final or error frame).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal

import trio
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from infernet.mesh.jobs import JobRunner, SendFrame
from infernet.protocol.frames import Accepted, FinalFrame, Frame, JobErrorFrame, JobRequest

__all__ = ["JobTracker", "NodeMetrics", "Outcome"]

Outcome = Literal["completed", "relayed", "failed", "refused", "cancelled"]
OUTCOMES: Final[tuple[Outcome, ...]] = ("completed", "relayed", "failed", "refused",
                                        "cancelled")
TTFT_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
RATE_BUCKETS: Final = (1.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0)


class NodeMetrics:
    """The node's Prometheus collectors, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Info("infernet_node", "Node identity and build.", registry=r)
        self.jobs = Counter("infernet_jobs", "Inbound jobs by outcome.", ["outcome"], registry=r)
        for outcome in OUTCOMES:
            self.jobs.labels(outcome)  # export zeros so rate() works from the first scrape
        self.tokens = Counter("infernet_tokens", "Tokens of jobs this node ran itself.",
                              ["kind"], registry=r)
        self.tokens.labels("prompt")
        self.tokens.labels("completion")
        self.ttft = Histogram("infernet_ttft_seconds", "Time to first token of own jobs.",
                              buckets=TTFT_BUCKETS, registry=r)
        self.rate = Histogram("infernet_decode_tokens_per_second",
                              "Decode speed of own jobs.", buckets=RATE_BUCKETS, registry=r)
        self.running = Gauge("infernet_jobs_running", "Jobs in flight (own and relayed).",
                             registry=r)
        self.engine_up = Gauge("infernet_engine_up", "1 when the engine answered its last "
                               "health check.", registry=r)
        self.peers_connected = Gauge("infernet_peers_connected", "Peers with an open "
                                     "connection.", registry=r)
        self.peers_online = Gauge("infernet_peers_online", "Peers whose announcement is "
                                  "fresh.", registry=r)
        self.slots_free = Gauge("infernet_slots_free", "Engine slots not running a job.",
                                registry=r)
        self.draining = Gauge("infernet_draining", "1 while the node drains before exit.",
                              registry=r)
        self.start_time = Gauge("infernet_start_time_seconds", "Unix time the node started.",
                                registry=r)

    def bind(self, name: str, read: Callable[[], float]) -> None:
        """Make gauge ``name`` (an attribute above) read its value at scrape time."""
        gauge = getattr(self, name)
        if not isinstance(gauge, Gauge):
            raise TypeError(f"{name} is not a gauge")
        gauge.set_function(read)


class JobTracker:
    """Counts jobs by outcome, gates admission while draining, and reports idleness."""

    def __init__(self, node_pubkey: str, metrics: NodeMetrics) -> None:
        self.node_pubkey = node_pubkey
        self.metrics = metrics
        self.counts: dict[Outcome, int] = dict.fromkeys(OUTCOMES, 0)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.running = 0
        self.draining = False
        self._idle = trio.Event()
        self._idle.set()
        # labels() takes a lock and validates its arguments: look each child up once.
        self._outcome_counters = {outcome: metrics.jobs.labels(outcome) for outcome in OUTCOMES}
        self._prompt_counter = metrics.tokens.labels("prompt")
        self._completion_counter = metrics.tokens.labels("completion")
        metrics.bind("running", lambda: self.running)
        metrics.bind("draining", lambda: float(self.draining))

    def wrap(self, runner: JobRunner) -> JobRunner:
        """Return ``runner`` with accounting and the drain gate around it."""

        async def tracked(request: JobRequest, peer: str, send: SendFrame) -> None:
            if self.draining:
                await send(JobErrorFrame(job_id=request.job_id, code="no_capacity",
                                         message="this node is shutting down"))
                self._record("refused")
                return
            seen = _Seen()

            async def observe(frame: Frame) -> None:
                seen.note(frame)
                await send(frame)

            self._enter()
            try:
                await runner(request, peer, observe)
            finally:
                self._leave()
                self._finish(seen)

        return tracked

    async def wait_idle(self) -> None:
        """Return once no job is in flight. Cancel-safe."""
        while self.running:
            await self._idle.wait()

    def _enter(self) -> None:
        if self.running == 0:
            self._idle = trio.Event()
        self.running += 1

    def _leave(self) -> None:
        self.running -= 1
        if self.running == 0:
            self._idle.set()

    def _finish(self, seen: _Seen) -> None:
        final = seen.final
        if final is None:
            self._record("refused" if seen.error and seen.accepted is None
                         else "failed" if seen.error else "cancelled")
            return
        if seen.accepted is not None and seen.accepted.node_pubkey not in ("", self.node_pubkey):
            self._record("relayed")
            return
        self._record("completed")
        self.prompt_tokens += final.prompt_tokens
        self.completion_tokens += final.completion_tokens
        self._prompt_counter.inc(final.prompt_tokens)
        self._completion_counter.inc(final.completion_tokens)
        self.metrics.ttft.observe(final.ttft_ms / 1000)
        if final.tokens_per_s > 0:
            self.metrics.rate.observe(final.tokens_per_s)

    def _record(self, outcome: Outcome) -> None:
        self.counts[outcome] += 1
        self._outcome_counters[outcome].inc()


class _Seen:
    """The frames of one job that decide its outcome."""

    __slots__ = ("accepted", "error", "final")

    def __init__(self) -> None:
        self.accepted: Accepted | None = None
        self.final: FinalFrame | None = None
        self.error = False

    def note(self, frame: Frame) -> None:
        if isinstance(frame, Accepted):
            self.accepted = frame
        elif isinstance(frame, FinalFrame):
            self.final = frame
        elif isinstance(frame, JobErrorFrame):
            self.error = True
