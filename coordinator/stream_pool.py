"""Job streams opened ahead of time, so a job does not wait for multistream-select.

Owns: a small pool of idle ``/infernet/job/1.0.0`` streams per node. Opening a libp2p
stream negotiates the protocol first (a round trip plus py-libp2p's own work: ~3-5 ms on
loopback, measured in ``bench/gateway_instant.py``), which every job paid before its
request could leave. Each job that takes a stream (or finds none) starts one replacement
in the background, so under load the pool holds about as many streams as jobs arrive
concurrently, and at rest it drains.

Invariants:
- A pooled stream is used at most once and only while younger than `MAX_IDLE` (nodes
  drop a stream whose request has not come within 10 s, ``specs/job-protocol.md`` §6);
  older ones are closed by the sweeper.
- At most `MAX_PER_PEER` idle streams per node; all of a node's streams are dropped when
  its connection closes.
- A job on a pooled stream behaves exactly as with ``infernet.mesh.jobs.open_job`` (it is
  that function, handed the pooled stream), and a pooled stream that fails while the
  request is written is replaced by a fresh one, once.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final, cast

import trio
from trio_typing import TaskStatus

from coordinator.metrics import Metrics
from infernet.mesh.host import MeshHost, ProtocolNotOffered
from infernet.mesh.job_mux import SessionPool
from infernet.mesh.jobs import JOB_PROTOCOL, JobCall, open_job
from infernet.protocol.errors import TransportError
from infernet.protocol.frames import JobRequest

__all__ = ["MAX_IDLE", "MAX_PER_PEER", "StreamPool"]

log = logging.getLogger("coordinator.streams")

MAX_IDLE: Final = 4.0
MAX_PER_PEER: Final = 64
SWEEP_EVERY: Final = 1.0


class _Handed:
    """Stands in for the mesh in ``open_job``: its one "new" stream is the pooled one."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    async def new_stream(self, peer_id: str, protocol: str) -> Any:
        return self._stream


class StreamPool:
    """Idle job streams per peer, refilled as jobs take them."""

    def __init__(self, mesh: MeshHost, *, max_per_peer: int = MAX_PER_PEER,
                 max_idle: float = MAX_IDLE, metrics: Metrics | None = None,
                 sessions: SessionPool | None = None) -> None:
        self._mesh = mesh
        self._sessions = sessions
        self._metrics = metrics
        self._max = max_per_peer
        self._max_idle = max_idle
        self._idle: dict[str, deque[tuple[Any, float]]] = {}
        self._opening: dict[str, int] = {}
        self._nursery: trio.Nursery | None = None
        self.hits = 0
        self.misses = 0

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open replacement streams and close stale ones until cancelled; then close all."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                while True:
                    await trio.sleep(SWEEP_EVERY)  # periodic sweep, not a wait for an event
                    self._sweep(trio.current_time())
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True), trio.move_on_after(2):  # bounded shutdown
                for peer_id in list(self._idle):
                    await self._close_all(self._idle.pop(peer_id))

    @asynccontextmanager
    async def open_job(self, peer_id: str, request: JobRequest, *,
                       read_timeout: float = 60.0) -> AsyncIterator[JobCall]:
        """Run ``request`` on the node's job session, or for a node without sessions,
        ``infernet.mesh.jobs.open_job`` on a pooled stream when one is ready. Cancel-safe.

        Raises:
            TransportError: the peer is unreachable.
        """
        if self._sessions is not None and self._sessions.speaks(peer_id):
            entered = False
            try:
                async with self._sessions.open_job(peer_id, request,
                                                   read_timeout=read_timeout) as call:
                    entered = True
                    if self._metrics:
                        self._metrics.stream_used(pooled=True)
                    yield call
                return
            except ProtocolNotOffered:
                if entered:
                    raise
                log.info("node %s has no job sessions; using a stream per job", peer_id)
        stream = self._take(peer_id)
        self._refill(peer_id)
        if stream is not None:
            entered = False
            try:
                async with open_job(cast(MeshHost, _Handed(stream)), peer_id, request,
                                    read_timeout=read_timeout) as call:
                    entered = True
                    self.hits += 1
                    if self._metrics:
                        self._metrics.stream_used(pooled=True)
                    yield call
                return
            except TransportError as exc:
                if entered:
                    raise
                # The pooled stream died while idle (writing the request failed): once more.
                log.debug("pooled stream to %s failed (%s); opening a fresh one", peer_id, exc)
        self.misses += 1
        if self._metrics:
            self._metrics.stream_used(pooled=False)
        async with open_job(self._mesh, peer_id, request, read_timeout=read_timeout) as call:
            yield call

    def drop(self, peer_id: str) -> None:
        """Forget a peer's session and idle streams (its connection closed); they are
        closed in the background."""
        if self._sessions is not None:
            self._sessions.drop(peer_id)
        streams = self._idle.pop(peer_id, None)
        if streams and self._nursery is not None:
            self._nursery.start_soon(self._close_all, streams)

    def idle(self) -> int:
        """Idle streams held now, all peers together."""
        return sum(len(q) for q in self._idle.values())

    def _take(self, peer_id: str) -> Any | None:
        pool = self._idle.get(peer_id)
        now = trio.current_time()
        while pool:
            stream, opened = pool.pop()  # the newest: the oldest age out at rest
            if now - opened < self._max_idle:
                return stream
            pool.appendleft((stream, opened))  # too old: leave it to the sweeper
            break
        return None

    def _refill(self, peer_id: str) -> None:
        if self._sessions is not None and self._sessions.speaks(peer_id):
            return  # its jobs share a session: a pre-opened stream would go unused
        held = len(self._idle.get(peer_id, ())) + self._opening.get(peer_id, 0)
        if self._nursery is None or held >= self._max:
            return
        self._opening[peer_id] = self._opening.get(peer_id, 0) + 1
        self._nursery.start_soon(self._open_one, peer_id)

    async def _open_one(self, peer_id: str) -> None:
        try:
            stream = await self._mesh.new_stream(peer_id, JOB_PROTOCOL)
        except TransportError as exc:
            log.debug("could not pre-open a job stream to %s: %s", peer_id, exc)
            return
        finally:
            self._opening[peer_id] -= 1
        self._idle.setdefault(peer_id, deque()).append((stream, trio.current_time()))

    def _sweep(self, now: float) -> None:
        for peer_id, pool in list(self._idle.items()):
            stale: deque[tuple[Any, float]] = deque()
            while pool and now - pool[0][1] >= self._max_idle:
                stale.append(pool.popleft())
            if stale and self._nursery is not None:
                self._nursery.start_soon(self._close_all, stale)
            if not pool:
                del self._idle[peer_id]

    @staticmethod
    async def _close_all(streams: deque[tuple[Any, float]]) -> None:
        for stream, _ in streams:
            with trio.move_on_after(1):
                try:
                    await stream.close()
                except Exception as exc:  # already gone with its connection
                    log.debug("closing an idle stream: %s", exc)
