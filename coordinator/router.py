"""Choosing a node for a job, holding its slot, and queueing jobs when every slot is busy.

Owns: the candidate list for a model (online nodes whose verified announcement offers the
model, and its weights hash when the job pins one), the coordinator's own view of each
node's free slots (announced ``slots_total`` minus the jobs this coordinator is running
there), the score, and a FIFO queue of jobs waiting for a slot.

Score, best first: more free slots; fewer failures in the last `FAILURE_WINDOW`; lower price
per output token; lower measured time to first token (in `LATENCY_BUCKET_MS` buckets, so
noise does not decide). Equal nodes are shuffled, so ties spread load fairly.

Invariants:
- No job goes to a node that has not announced the model in a verified announcement.
- Every `Router.acquire` that returned is matched by exactly one `Router.release`.
- Waiting jobs get slots in arrival order (per model); a node that refused for lack of
  capacity is skipped for `BUSY_BACKOFF` seconds, doubling while it keeps refusing, until
  its next announcement.
- Time is trio's clock (monotonic seconds) throughout.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Final

import trio

from infernet.mesh.peer_table import PeerEntry, PeerTable
from infernet.protocol.errors import InfernetError

__all__ = ["ACCEPT_TIMEOUT", "NodeStats", "Router", "candidates"]

log = logging.getLogger("coordinator.router")

ACCEPT_TIMEOUT: Final = 10.0
BUSY_BACKOFF: Final = 0.5
BUSY_BACKOFF_MAX: Final = 8.0
FAILURE_WINDOW: Final = 300.0
LATENCY_BUCKET_MS: Final = 50.0
RECHECK_EVERY: Final = 0.25
_EWMA: Final = 0.2


def candidates(
    table: PeerTable, model: str, now: float, *, weights_hash: str = "", pinned: str = ""
) -> list[PeerEntry]:
    """Online nodes serving ``model`` (and ``weights_hash``/node ``pinned`` if given).

    Raises:
        InfernetError: ``no_capacity`` when no node is online at all, ``model_not_found``
            when online nodes exist but none serves ``model`` as asked.
    """
    online = table.online(now)
    if not online:
        raise InfernetError("no node is online in the network right now", code="no_capacity")
    serving = [e for e in online if _offers(e, model, weights_hash)]
    if pinned:
        serving = [e for e in serving if e.pubkey == pinned]
        if not serving:
            raise InfernetError(f"node {pinned[:16]} is not online serving {model!r}",
                                code="model_not_found")
    if not serving:
        detail = f" with weights {weights_hash[:16]}" if weights_hash else ""
        raise InfernetError(f"no online node serves model {model!r}{detail}",
                            code="model_not_found")
    return [e for e in serving if not e.announcement.caps.draining]  # [] → waits, then 503


def _offers(entry: PeerEntry, model: str, weights_hash: str) -> bool:
    return any(m.name == model and (not weights_hash or m.weights_hash == weights_hash)
               for m in entry.announcement.caps.models)


@dataclass(slots=True)
class NodeStats:
    """What this coordinator measured about one node."""

    ttft_ms: float | None = None
    tokens_per_s: dict[str, float] = field(default_factory=dict)
    failures: deque[float] = field(default_factory=deque)
    jobs: int = 0


@dataclass(slots=True)
class _Waiter:
    model: str
    weights_hash: str
    pinned: str
    exclude: frozenset[str]
    event: trio.Event = field(default_factory=trio.Event)
    entry: PeerEntry | None = None


class Router:
    """Slot accounting and the wait queue over a `PeerTable`."""

    def __init__(self, table: PeerTable) -> None:
        self.table = table
        self._inflight: dict[str, int] = {}
        self._busy_until: dict[str, float] = {}
        self._busy_streak: dict[str, int] = {}
        self._stats: dict[str, NodeStats] = {}
        self._waiters: deque[_Waiter] = deque()

    # --- choosing -----------------------------------------------------------------------

    def free_slots(self, entry: PeerEntry, now: float) -> int:
        """Slots this coordinator believes are free on ``entry``."""
        if self._busy_until.get(entry.pubkey, 0.0) > now:
            return 0
        return max(0, entry.announcement.caps.slots_total - self._inflight.get(entry.pubkey, 0))

    def ranked(self, model: str, now: float, *, weights_hash: str = "", pinned: str = "",
               exclude: frozenset[str] = frozenset()) -> list[PeerEntry]:
        """Candidates with a free slot, best first (see the module docstring).

        Raises:
            InfernetError: as `candidates`.
        """
        found = [e for e in candidates(self.table, model, now, weights_hash=weights_hash,
                                       pinned=pinned)
                 if e.pubkey not in exclude and self.free_slots(e, now) > 0]
        random.shuffle(found)  # the sort is stable: equal nodes stay in random order
        found.sort(key=lambda e: self._score(e, model, now))
        return found

    def _score(self, entry: PeerEntry, model: str, now: float) -> tuple[float, ...]:
        stats = self._stats.get(entry.pubkey)
        failures = len(self._recent_failures(stats, now)) if stats else 0
        price = next((m.price_per_1k_output for m in entry.announcement.caps.models
                      if m.name == model), 0.0)
        ttft = stats.ttft_ms if stats and stats.ttft_ms is not None else 0.0
        return (-self.free_slots(entry, now), failures, price, ttft // LATENCY_BUCKET_MS)

    # --- holding slots --------------------------------------------------------------------

    async def acquire(
        self,
        model: str,
        deadline: float,
        *,
        weights_hash: str = "",
        pinned: str = "",
        exclude: frozenset[str] = frozenset(),
    ) -> PeerEntry:
        """Hold a slot on the best node for ``model``, waiting in line until ``deadline``.

        Cancel-safe: a cancelled wait holds nothing.

        Raises:
            InfernetError: at ``deadline`` with no slot: as `candidates` when no node could
                serve the job at all, else ``no_capacity``.
        """
        waiter = _Waiter(model, weights_hash, pinned, exclude)
        self._waiters.append(waiter)
        try:
            self._hand_out(trio.current_time())
            while waiter.entry is None:
                now = trio.current_time()
                if now >= deadline:
                    self.ranked(model, now, weights_hash=weights_hash, pinned=pinned)
                    raise InfernetError(
                        f"every node serving {model!r} stayed busy or unreachable",
                        code="no_capacity")
                with trio.move_on_after(min(deadline - now, RECHECK_EVERY)):
                    await waiter.event.wait()
                self._hand_out(trio.current_time())
        except BaseException:
            if waiter.entry is not None:
                self.release(waiter.entry.pubkey)
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        return waiter.entry

    def _hand_out(self, now: float) -> None:
        """Give free slots to waiters, oldest first."""
        # Once a waiter finds no slot, every later waiter asking the same finds none either
        # (handing out only takes slots away): skip them, so that a release with many jobs
        # in line costs one ranking per kind of request, not one per waiting job.
        stuck: set[tuple[str, str, str, frozenset[str]]] = set()
        for waiter in list(self._waiters):
            ask = (waiter.model, waiter.weights_hash, waiter.pinned, waiter.exclude)
            if ask in stuck:
                continue
            try:
                ranked = self.ranked(waiter.model, now, weights_hash=waiter.weights_hash,
                                     pinned=waiter.pinned, exclude=waiter.exclude)
            except InfernetError:
                ranked = []  # nobody serves it right now; it keeps its place in line
            if not ranked:
                stuck.add(ask)
                continue
            waiter.entry = ranked[0]
            self._inflight[ranked[0].pubkey] = self._inflight.get(ranked[0].pubkey, 0) + 1
            self._waiters.remove(waiter)
            waiter.event.set()

    def release(self, pubkey: str, *, busy: bool = False, failed: bool = False) -> None:
        """Give back a slot; ``busy``: the node refused for lack of capacity (each refusal
        in a row doubles its pause, up to `BUSY_BACKOFF_MAX`: a draining node announces no
        free slot only at its next announcement); ``failed``: it was unreachable or lost
        the job."""
        now = trio.current_time()
        left = self._inflight.get(pubkey, 0) - 1
        if left > 0:
            self._inflight[pubkey] = left
        else:
            self._inflight.pop(pubkey, None)
        if busy:
            streak = self._busy_streak.get(pubkey, 0) + 1
            self._busy_streak[pubkey] = streak
            self._busy_until[pubkey] = now + min(BUSY_BACKOFF * 2 ** (streak - 1),
                                                 BUSY_BACKOFF_MAX)
        elif not failed:
            self._busy_streak.pop(pubkey, None)
        if failed:
            self._stats_for(pubkey).failures.append(now)
        self._hand_out(now)

    def notify(self, entry: PeerEntry | None = None) -> None:
        """Capacity may have changed (``entry`` announced): serve the queue.

        A node's own word replaces what its refusals suggested, except that a node running
        none of our jobs yet announcing no free slot (draining, or busy with other clients)
        is left alone for `BUSY_BACKOFF_MAX` seconds.
        """
        now = trio.current_time()
        if entry is not None:
            caps = entry.announcement.caps
            self._busy_streak.pop(entry.pubkey, None)
            self._busy_until.pop(entry.pubkey, None)
            if caps.slots_free == 0 and not self._inflight.get(entry.pubkey):
                self._busy_until[entry.pubkey] = now + BUSY_BACKOFF_MAX
        self._hand_out(now)

    def queued(self) -> int:
        """Jobs waiting for a slot now."""
        return len(self._waiters)

    def inflight(self) -> int:
        """Slots held now, all nodes together."""
        return sum(self._inflight.values())

    # --- measurements ---------------------------------------------------------------------

    def record(self, pubkey: str, model: str, ttft_ms: float, tokens_per_s: float) -> None:
        """Fold one finished job's timings into the node's running averages."""
        stats = self._stats_for(pubkey)
        stats.jobs += 1
        stats.ttft_ms = ttft_ms if stats.ttft_ms is None else (
            (1 - _EWMA) * stats.ttft_ms + _EWMA * ttft_ms)
        if tokens_per_s > 0:
            old = stats.tokens_per_s.get(model)
            stats.tokens_per_s[model] = tokens_per_s if old is None else (
                (1 - _EWMA) * old + _EWMA * tokens_per_s)

    def stats(self, pubkey: str) -> NodeStats | None:
        """What was measured about a node, if anything."""
        return self._stats.get(pubkey)

    def _stats_for(self, pubkey: str) -> NodeStats:
        return self._stats.setdefault(pubkey, NodeStats())

    def _recent_failures(self, stats: NodeStats, now: float) -> deque[float]:
        while stats.failures and stats.failures[0] < now - FAILURE_WINDOW:
            stats.failures.popleft()
        return stats.failures
