"""Keeping connections to bootstrap peers, dialled in the background with backoff.

Owns: one task per bootstrap address that dials it, waits while the connection holds, and
re-dials with exponential backoff (1 s doubling to 30 s) after a failure or a disconnect.
The node never blocks its start on these dials (notes/py-libp2p.md, default 8). With a
coordinator URL, the coordinator's own addresses and a few online peers come from its
``GET /api/v1/bootstrap``.
"""

from __future__ import annotations

import logging
from typing import Final

import httpx
import trio

from infernet.mesh.host import MeshHost, parse_peer_multiaddr
from infernet.protocol.errors import TransportError

__all__ = ["bootstrap_from_coordinator", "keep_connected", "parse_bootstrap"]

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


def parse_bootstrap(body: object) -> tuple[list[str], list[str]]:
    """Split a coordinator's ``GET /api/v1/bootstrap`` body into (its addrs, peers' addrs).

    Only ``/p2p/`` multiaddrs are kept; anything malformed is skipped.
    """
    if not isinstance(body, dict):
        return [], []
    coordinator = body.get("coordinator")
    own = coordinator.get("addrs", []) if isinstance(coordinator, dict) else []
    peers = body.get("peers")
    others = [a for p in peers if isinstance(p, dict) for a in p.get("addrs", [])] \
        if isinstance(peers, list) else []

    def usable(addrs: object) -> list[str]:
        found = []
        for addr in addrs if isinstance(addrs, list) else []:
            try:
                if isinstance(addr, str):
                    parse_peer_multiaddr(addr)
                    found.append(addr)
            except TransportError:
                continue
        return found

    return usable(own), usable(others)


async def bootstrap_from_coordinator(mesh: MeshHost, url: str, *, max_peers: int = 8) -> None:
    """Learn bootstrap peers from a coordinator's ``/api/v1/bootstrap`` and keep the
    coordinator connected; retries with backoff until the coordinator answers. Runs until
    cancelled."""
    backoff = BACKOFF_MIN
    endpoint = f"{url.rstrip('/')}/api/v1/bootstrap"
    while True:
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                response = await client.get(endpoint)
                response.raise_for_status()
                own, others = parse_bootstrap(response.json())
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("bootstrap list from %s: %s; retrying in %.0fs", endpoint, exc, backoff)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX)
            continue
        break
    log.info("coordinator at %s: %d address(es), %d peer address(es)", url, len(own),
             len(others))
    async with trio.open_nursery() as nursery:
        for addr in others[:max_peers]:
            nursery.start_soon(_dial_once, mesh, addr)
        await keep_connected(mesh, own)  # one peer id: once any address connects, all idle


async def _dial_once(mesh: MeshHost, addr: str) -> None:
    try:
        await mesh.connect(addr)
    except TransportError as exc:
        log.debug("bootstrap peer %s: %s", addr, exc)
