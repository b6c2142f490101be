"""Relaying a job the node cannot serve itself to a peer that announces the model.

Owns: the relay path of `JobExecutor`: pick the best peer from the node's own peer table
(`mesh.routing.dispatch`, with failover before the first token) and forward its frames to
the client unchanged, so provenance (the serving node's pubkey in ``accepted``) survives.

Loop protection by construction: a job is only ever relayed to a node that announces the
model, and a node announces only models its own engine serves, which it runs locally before
considering a relay. So a job crosses at most one relay hop. Relays are bounded by
`MAX_RELAYS` concurrent jobs; beyond that the client gets ``no_capacity``.
"""

from __future__ import annotations

import logging
from contextlib import aclosing
from typing import Final

import trio

from infernet.mesh.host import MeshHost
from infernet.mesh.jobs import SendFrame
from infernet.mesh.peer_table import PeerTable
from infernet.mesh.routing import dispatch
from infernet.protocol.errors import InfernetError, JobFailed, TransportError
from infernet.protocol.frames import JobErrorFrame, JobRequest

__all__ = ["MAX_RELAYS", "Relay"]

log = logging.getLogger("infernet.node.relay")

MAX_RELAYS: Final = 32
# Error codes that mean the node broke, not that the job is wrong: another node may serve it.
_LOST: Final = frozenset({"node_disconnected", "timeout", "backend_unavailable", "internal_error"})


class Relay:
    """Forwards jobs for models this node does not serve."""

    def __init__(self, mesh: MeshHost, table: PeerTable, own_pubkey: str) -> None:
        self.mesh = mesh
        self.table = table
        self.own_pubkey = own_pubkey
        self.limiter = trio.CapacityLimiter(MAX_RELAYS)
        self.relayed = 0

    async def _relay(self, request: JobRequest, send: SendFrame) -> None:
        """Forward the job; a node lost before its first token is replaced by the next one.

        The client sees one ``accepted`` (the first serving node's); a retry after it is
        logged, and the chunks and final frame come from the node that really served.

        Raises:
            InfernetError: no node could take the job, or the serving node failed after
                its first token (``node_disconnected``/``timeout``/its own code).
        """
        job = request.job_id
        tried: set[str] = {self.own_pubkey}
        accepted_sent = False
        # A sealed job opens only on the node it is sealed to: no other node can take it.
        pinned = request.encrypted_to if request.encrypted else ""
        while True:
            async with dispatch(self.mesh, self.table, request, trio.current_time(),
                                exclude=tried, pinned=pinned) as (call, entry):
                tried.add(entry.pubkey)
                log.info("job %s relayed to %s", job, entry.pubkey[:12])
                if not accepted_sent and call.accepted_frame is not None:
                    await send(call.accepted_frame)
                    accepted_sent = True
                streamed = False
                try:
                    # Frames pass through unopened: sealed chunks stay sealed end to end.
                    async with aclosing(call.chunk_frames()) as chunks:
                        async for chunk in chunks:
                            streamed = True
                            await send(chunk)
                except (TransportError, JobFailed) as exc:
                    # A node that broke before its first token (a reset, or its error frame
                    # saying so) is replaced; a refusal of the job itself is final.
                    if isinstance(exc, JobFailed) and exc.code not in _LOST:
                        raise
                    self.table.record_outcome(entry.pubkey, False, trio.current_time())
                    if streamed:
                        raise
                    log.warning("job %s: %s lost before its first token (%s); re-routing",
                                job, entry.pubkey[:12], exc)
                    continue
                final = call.final
                if final is None:  # chunks() returns only after a final frame
                    raise InfernetError("upstream ended without a final frame")
                await send(final)  # same job id: the frame passes through unchanged
                self.table.record_outcome(entry.pubkey, True, trio.current_time())
                self.relayed += 1
                return

    def can_route(self, model: str, pinned: str = "") -> bool:
        """True when some online peer (not us; ``pinned`` when given) announces ``model``."""
        now = trio.current_time()
        return any(e.pubkey != self.own_pubkey and (not pinned or e.pubkey == pinned)
                   for e in self.table.serving(model, now))

    async def run(self, request: JobRequest, send: SendFrame) -> None:
        """Relay ``request`` and forward every frame through ``send``. Cancel-safe.

        Never raises for job failures: they become an ``error`` frame to the client.
        """
        job = request.job_id
        try:
            self.limiter.acquire_on_behalf_of_nowait(job)
        except trio.WouldBlock:
            await send(JobErrorFrame(job_id=job, code="no_capacity", message="relay is busy"))
            return
        try:
            await self._relay(request, send)
        except InfernetError as exc:
            log.warning("job %s: relay failed: %s: %s", job, exc.code, exc)
            await send(JobErrorFrame(job_id=job, code=exc.code, message=str(exc)))
        finally:
            self.limiter.release_on_behalf_of(job)
