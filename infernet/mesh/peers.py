"""Keeping the peer table true: announcements in, liveness, disconnects and peer exchange.

Owns: the `PeerTable` of a node or coordinator and everything that updates it — verified
announcements from `AnnouncementGossip`, RTTs and silences from `Liveness`, connection
closes from the host, and peer exchange: an announcement relayed from a peer we are not
connected to carries its listen addresses, and we dial it (one address at a time) while we
have fewer than ``max_peers`` connections.

Invariants: every connected peer that announced is pinged; a dial per peer is attempted at
most once per `REDIAL_AFTER` seconds; dials run in this object's nursery.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Final

import trio
from trio_typing import TaskStatus

from infernet.mesh.gossip import AnnouncementGossip
from infernet.mesh.host import MeshHost
from infernet.mesh.liveness import Liveness
from infernet.mesh.peer_table import PeerTable
from infernet.protocol.announce import Announcement
from infernet.protocol.errors import TransportError

__all__ = ["PeerManager"]

log = logging.getLogger("infernet.mesh.peers")

REDIAL_AFTER: Final = 30.0

AnnouncementHook = Callable[[Announcement, str, bool], Awaitable[None]]


class PeerManager:
    """The peer table plus the tasks that keep it current."""

    def __init__(self, mesh: MeshHost, own_pubkey: str, *, max_peers: int = 32,
                 exchange: bool = True, on_change: AnnouncementHook | None = None) -> None:
        self.mesh = mesh
        self.own_pubkey = own_pubkey
        self.max_peers = max_peers
        self.exchange = exchange
        self.table = PeerTable()
        self.gossip = AnnouncementGossip(mesh, self._on_announcement)
        self.liveness = Liveness(mesh, self.table.set_rtt, self._on_silent)
        self._on_change = on_change
        self._last_dial: dict[str, float] = {}
        self._nursery: trio.Nursery | None = None
        mesh.on_disconnect(self._on_disconnect)

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run gossip, liveness and peer exchange until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await nursery.start(self.liveness.serve)
            await nursery.start(self.gossip.serve)
            task_status.started()

    async def _on_announcement(self, ann: Announcement, peer_id: str) -> None:
        pubkey = ann.pubkey.hex()
        if pubkey == self.own_pubkey:
            return
        if self.table.is_retired(pubkey):
            log.debug("announcement of retired key %s from %s ignored", pubkey[:12], peer_id)
            return
        connected = self.mesh.is_connected(peer_id)
        changed = self.table.update(ann, peer_id, trio.current_time(), connected=connected)
        if connected:
            self.liveness.watch(peer_id)
        elif self.exchange and ann.caps.listen_addrs:
            self._maybe_dial(peer_id, ann)
        if changed and self._on_change is not None:
            await self._on_change(ann, peer_id, connected)

    def _maybe_dial(self, peer_id: str, ann: Announcement) -> None:
        now = trio.current_time()
        if self._nursery is None or len(self.mesh.connected_peers()) >= self.max_peers:
            return
        if now - self._last_dial.get(peer_id, -REDIAL_AFTER) < REDIAL_AFTER:
            return
        self._last_dial[peer_id] = now
        self._nursery.start_soon(self._dial, peer_id, ann)

    async def _dial(self, peer_id: str, ann: Announcement) -> None:
        for addr in ann.caps.listen_addrs:
            full = addr if "/p2p/" in addr else f"{addr}/p2p/{peer_id}"
            try:
                await self.mesh.connect(full)
            except TransportError as exc:
                log.debug("peer exchange: %s unreachable at %s: %s", peer_id, addr, exc)
                continue
            log.info("peer exchange: connected to %s", peer_id)
            self.table.update(ann, peer_id, trio.current_time(), connected=True)
            self.liveness.watch(peer_id)
            return

    async def _on_silent(self, peer_id: str) -> None:
        for pubkey in self.table.mark_disconnected(peer_id):
            log.info("node %s stopped answering: offline", pubkey[:12])

    async def _on_disconnect(self, peer_id: str) -> None:
        for pubkey in self.table.mark_disconnected(peer_id):
            log.info("node %s disconnected: offline", pubkey[:12])
