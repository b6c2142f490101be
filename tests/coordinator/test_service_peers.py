"""The coordinator as a mesh peer: a restarted coordinator redials the nodes it knew."""

from __future__ import annotations

import time
from pathlib import Path

import trio

from coordinator.service import (
    CoordinatorConfig,
    _known_addresses,
    open_store,
    run_coordinator,
)
from coordinator.store import PeerRecord
from infernet.mesh.host import open_host
from infernet.protocol.announce import Capabilities, ModelOffer, build_announcement
from infernet.protocol.event import encode_event
from infernet.protocol.keys import SecretKey


def _record(key: SecretKey, peer_id: str, addrs: list[str], *, created: int,
            last_seen: float) -> PeerRecord:
    caps = Capabilities(backend="fake", models=(ModelOffer(name="m"),),
                        listen_addrs=tuple(addrs), expires_at=created + 120)
    event = encode_event(build_announcement(caps, key, created)).decode()
    return PeerRecord(key.public_key.hex(), peer_id, event, last_seen)


async def test_a_restarted_coordinator_dials_the_nodes_it_knew(tmp_path: Path) -> None:
    node_key = SecretKey.generate().even_y()
    async with open_host(node_key.secret_bytes(), listen_host="127.0.0.1", port=0) as node, \
            trio.open_nursery() as nursery:
        # What a previous run stored: the node's announcement, long expired, with its address.
        store = open_store(tmp_path)
        store.save_peer(_record(node_key, node.peer_id, node.listen_addrs(),
                                created=int(time.time()) - 3600, last_seen=time.time() - 3600))
        store.close()
        info = await nursery.start(run_coordinator, CoordinatorConfig(
            data_dir=tmp_path, http_port=0, p2p_host="127.0.0.1", p2p_port=0))
        with trio.fail_after(10):
            while not node.is_connected(info.peer_id):  # noqa: ASYNC110 (no event to wait on)
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()


def test_only_recent_intact_announcements_are_redialled() -> None:
    key = SecretKey.generate().even_y()
    now = time.time()
    addr = "/ip4/127.0.0.1/tcp/4001"
    fresh = _record(key, "peerA", [addr], created=int(now) - 60, last_seen=now - 60)
    assert _known_addresses(fresh, now) == [f"{addr}/p2p/peerA"]
    stale = _record(key, "peerA", [addr], created=int(now) - 60, last_seen=now - 8 * 86400)
    assert _known_addresses(stale, now) == []
    tampered = PeerRecord(fresh.pubkey, "peerA", fresh.event.replace("4001", "4002"), now)
    assert _known_addresses(tampered, now) == []
    other = SecretKey.generate().even_y().public_key.hex()
    assert _known_addresses(PeerRecord(other, "peerA", fresh.event, now), now) == []
