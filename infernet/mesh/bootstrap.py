"""Keeping connections to bootstrap peers, dialled in the background with backoff.

Owns: one task per bootstrap address that dials it, waits while the connection holds, and
re-dials with exponential backoff (1 s doubling to 30 s) after a failure or a disconnect.
The node never blocks its start on these dials (notes/py-libp2p.md, default 8).
"""

from __future__ import annotations

import logging
from typing import Final

import trio

from infernet.mesh.host import MeshHost, parse_peer_multiaddr
from infernet.protocol.errors import TransportError

__all__ = ["keep_connected"]

log = logging.getLogger("infernet.mesh.bootstrap")

BACKOFF_MIN: Final = 1.0
BACKOFF_MAX: Final = 30.0
CHECK_EVERY: Final = 1.0


async def keep_connected(mesh: MeshHost, addrs: list[str]) -> None:
    """Dial every address and keep it connected; runs until cancelled.

    Raises:
        TransportError: an address is malformed (code bad_request), before any dial.
    """
    for addr in addrs:
        parse_peer_multiaddr(addr)
    async with trio.open_nursery() as nursery:
        for addr in addrs:
            nursery.start_soon(_keep_one, mesh, addr)


async def _keep_one(mesh: MeshHost, addr: str) -> None:
    peer_id, _ = parse_peer_multiaddr(addr)
    backoff = BACKOFF_MIN
    while True:
        if not mesh.is_connected(peer_id):
            try:
                await mesh.connect(addr)
                log.info("connected to bootstrap peer %s", addr)
                backoff = BACKOFF_MIN
            except TransportError as exc:
                log.warning("bootstrap %s: %s; retrying in %.0fs", addr, exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
        await trio.sleep(CHECK_EVERY)  # a periodic liveness check, not a wait for an event
