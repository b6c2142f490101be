"""Liveness of connected peers: a ping every half second, offline within 2 s of silence.

Owns: one long-lived ``/ipfs/ping/1.0.0`` stream per watched peer (a new stream per ping
would cost a multistream-select each time), the measured round-trip time, and declaring a
peer unresponsive when no pong arrives within `PONG_TIMEOUT`. An unresponsive peer's
connection is closed, so the usual disconnect path marks it offline everywhere.

Invariants: at most one watcher task per peer; every watcher lives in the `Liveness`
nursery and ends when the peer disconnects or stops answering.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
from libp2p.host.ping import ID as PING_PROTOCOL
from libp2p.host.ping import perform_ping_roundtrip
from libp2p.peer.id import ID
from trio_typing import TaskStatus

from infernet.mesh.host import MeshHost
from infernet.protocol.errors import TransportError

__all__ = ["PING_EVERY", "PONG_TIMEOUT", "Liveness"]

log = logging.getLogger("infernet.mesh.liveness")

PING_EVERY: Final = 0.5
PONG_TIMEOUT: Final = 1.5  # + at most PING_EVERY since the last pong: offline within 2 s

RttHandler = Callable[[str, float], None]
SilentHandler = Callable[[str], Awaitable[None]]


class Liveness:
    """Pings watched peers; reports RTTs and peers that stopped answering."""

    def __init__(self, mesh: MeshHost, on_rtt: RttHandler, on_silent: SilentHandler) -> None:
        self._mesh = mesh
        self._on_rtt = on_rtt
        self._on_silent = on_silent
        self._watched: set[str] = set()
        self._nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the watchers until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await trio.sleep_forever()

    def watch(self, peer_id: str) -> None:
        """Start pinging ``peer_id`` unless already watched. Needs `serve` running."""
        if peer_id in self._watched or self._nursery is None:
            return
        self._watched.add(peer_id)
        self._nursery.start_soon(self._watch, peer_id)

    @property
    def watched(self) -> frozenset[str]:
        """Peers currently being pinged."""
        return frozenset(self._watched)

    async def _watch(self, peer_id: str) -> None:
        try:
            # A broken ping stream on a live connection (a reconnect, a reset) is reopened;
            # only silence, or the connection going away, ends the watch.
            while self._mesh.is_connected(peer_id):
                try:
                    stream = await self._mesh.new_stream(peer_id, PING_PROTOCOL,
                                                         timeout=PONG_TIMEOUT)
                except TransportError as exc:
                    log.info("cannot ping %s: %s", peer_id, exc)
                    return
                try:
                    if await self._ping_loop(peer_id, stream):
                        return
                finally:
                    await _reset(stream, peer_id)
        finally:
            self._watched.discard(peer_id)

    async def _ping_loop(self, peer_id: str, stream: Any) -> bool:
        """Ping until the peer goes silent (return True) or the stream breaks (False)."""
        while self._mesh.is_connected(peer_id):
            try:
                with trio.fail_after(PONG_TIMEOUT):
                    rtt_ms = await perform_ping_roundtrip(stream)
            except trio.TooSlowError:
                log.warning("peer %s stopped answering pings: closing its connection", peer_id)
                await self._mesh.host.disconnect(ID.from_base58(peer_id))
                await self._on_silent(peer_id)
                return True
            except Exception as exc:  # stream reset / EOF: reopen if still connected
                log.debug("ping to %s broke: %s", peer_id, exc)
                return False
            self._on_rtt(peer_id, float(rtt_ms))
            await trio.sleep(PING_EVERY)  # the ping period, not a wait for an event
        return False


async def _reset(stream: Any, peer_id: str) -> None:
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await stream.reset()
        except Exception as exc:  # already gone with its connection
            log.debug("ping stream to %s: %s", peer_id, exc)
