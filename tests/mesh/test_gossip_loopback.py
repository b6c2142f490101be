"""Announcements over real gossipsub between two hosts: verified ones arrive, forged ones don't."""

from __future__ import annotations

import logging
import time

import pytest
import trio

from infernet.mesh.gossip import ANNOUNCE_TOPIC, AnnouncementGossip
from infernet.mesh.host import open_host
from infernet.protocol.announce import Announcement, Capabilities, ModelOffer, build_announcement
from infernet.protocol.event import encode_event
from infernet.protocol.keys import SecretKey


def _announcement(key: SecretKey, model: str) -> bytes:
    now = int(time.time())
    caps = Capabilities(backend="test", models=(ModelOffer(name=model),), expires_at=now + 60)
    return encode_event(build_announcement(caps, key, now))


async def test_only_verified_announcements_reach_the_handler(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="infernet.mesh.gossip")
    key_a, key_b, stranger = (SecretKey.generate().even_y() for _ in range(3))
    received: list[tuple[str, str]] = []
    got_valid = trio.Event()

    async def on_announcement(ann: Announcement, peer_id: str) -> None:
        received.append((ann.pubkey.hex(), ann.caps.models[0].name))
        if ann.caps.models[0].name == "real":
            got_valid.set()

    async def ignore(ann: Announcement, peer_id: str) -> None:
        return None

    async with open_host(key_a.secret_bytes(), listen_host="127.0.0.1", port=0) as a, \
            open_host(key_b.secret_bytes(), listen_host="127.0.0.1", port=0) as b, \
            trio.open_nursery() as nursery:
        gossip_a = AnnouncementGossip(a, on_announcement)
        await nursery.start(gossip_a.serve)
        # B joins the topic without a validator, so it forwards whatever it is given: the
        # checks under test are A's.
        await b.pubsub.subscribe(ANNOUNCE_TOPIC)
        gossip_b = AnnouncementGossip(b, ignore)
        await b.connect(a.listen_addrs()[0])
        with trio.fail_after(10):
            while a.peer_id not in gossip_b.mesh_peers():  # noqa: ASYNC110 (polls a library set)
                await trio.sleep(0.05)
        # B relays an announcement signed by someone else (pubkey ≠ B's peer id key),
        # then garbage, then its own valid one. Gossip preserves order from one sender.
        await b.pubsub.publish(ANNOUNCE_TOPIC, _announcement(stranger, "forged"))
        await b.pubsub.publish(ANNOUNCE_TOPIC, b"\x00not json at all")
        await b.pubsub.publish(ANNOUNCE_TOPIC, _announcement(key_b, "real"))
        with trio.fail_after(10):
            await got_valid.wait()
        nursery.cancel_scope.cancel()
    assert received == [(key_b.public_key.hex(), "real")]
    dropped = [r.getMessage() for r in caplog.records if "dropped announcement" in r.getMessage()]
    assert any("does not match" in m for m in dropped), dropped
    assert len(dropped) >= 2, dropped


async def test_a_replayed_announcement_reaches_the_handler_once() -> None:
    key_a, key_b = (SecretKey.generate().even_y() for _ in range(2))
    received: list[str] = []

    async def on_announcement(ann: Announcement, peer_id: str) -> None:
        received.append(ann.event.id)

    async with open_host(key_a.secret_bytes(), listen_host="127.0.0.1", port=0) as a, \
            open_host(key_b.secret_bytes(), listen_host="127.0.0.1", port=0) as b, \
            trio.open_nursery() as nursery:
        await nursery.start(AnnouncementGossip(a, on_announcement).serve)
        await b.pubsub.subscribe(ANNOUNCE_TOPIC)
        gossip_b = AnnouncementGossip(b, on_announcement)
        await b.connect(a.listen_addrs()[0])
        with trio.fail_after(10):
            while a.peer_id not in gossip_b.mesh_peers():  # noqa: ASYNC110 (polls a library set)
                await trio.sleep(0.05)
        event = _announcement(key_b, "real")
        await b.pubsub.publish(ANNOUNCE_TOPIC, event)
        await b.pubsub.publish(ANNOUNCE_TOPIC, event)  # the same signed event, replayed
        await b.pubsub.publish(ANNOUNCE_TOPIC, _announcement(key_b, "later"))  # a fresh one
        with trio.fail_after(10):
            while len(received) < 2:  # noqa: ASYNC110 (waits for the fresh one to land)
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert len(received) == 2 and len(set(received)) == 2  # the replay was dropped
