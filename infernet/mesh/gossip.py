"""Capability announcements on gossipsub topic ``infernet/announce/1``.

Owns: subscribing, validating before forwarding (id, BIP-340 signature, event pubkey equal to
the key inside the publishing peer's id, freshness, size), deduplicating by event id, and
publishing our own. Spec: ``specs/announce.md``.

Invariants: a handler only ever sees announcements that verified; our own messages coming
back on the subscription are dropped; the dedupe set is bounded.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio
from libp2p.peer.id import ID
from trio_typing import TaskStatus

from infernet.mesh.host import MeshHost
from infernet.protocol.announce import Announcement, AnnouncementVerifier
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import peer_id_to_base58, public_key_from_peer_id_bytes

__all__ = ["ANNOUNCE_TOPIC", "AnnouncementGossip", "AnnouncementHandler"]

log = logging.getLogger("infernet.mesh.gossip")

ANNOUNCE_TOPIC: Final = "infernet/announce/1"
MAX_ANNOUNCEMENT: Final = 16 << 10
INVALID_LIMIT: Final = 20
INVALID_WINDOW: Final = 10.0
_SEEN_MAX: Final = 4096

AnnouncementHandler = Callable[[Announcement, str], Awaitable[None]]


def _msg_key(msg: Any) -> tuple[bytes, bytes]:
    return bytes(msg.from_id), bytes(msg.seqno)


class AnnouncementGossip:
    """Receives verified announcements and publishes ours."""

    def __init__(self, mesh: MeshHost, handler: AnnouncementHandler) -> None:
        self._mesh = mesh
        self._handler = handler
        self._seen: OrderedDict[str, None] = OrderedDict()
        # Caches parsed node keys: verification then costs little more than the signature.
        self._verifier = AnnouncementVerifier(max_size=MAX_ANNOUNCEMENT)
        self._validated: OrderedDict[tuple[bytes, bytes], tuple[Announcement, str]] = OrderedDict()
        self._invalid: dict[str, deque[float]] = {}
        self._offenders_tx, self._offenders_rx = trio.open_memory_channel[str](64)
        self.dropped_peers = 0

    def _parse(self, msg: Any) -> tuple[Announcement, str]:
        sender = public_key_from_peer_id_bytes(bytes(msg.from_id))
        ann = self._verifier.parse(bytes(msg.data), now=int(time.time()), sender_pubkey=sender)
        return ann, peer_id_to_base58(bytes(msg.from_id))

    def _validate(self, forwarder: Any, msg: Any) -> bool:
        try:
            parsed = self._parse(msg)
        except InfernetError as exc:
            peer = str(forwarder.to_base58())
            count = self._count_invalid(peer)
            # A flood would flood the log too: the first few per window are enough.
            log.log(logging.WARNING if count <= 3 else logging.DEBUG,
                    "dropped announcement from %s: %s", peer, exc)
            return False
        # Hand the parsed result to the receive loop instead of verifying twice.
        self._validated[_msg_key(msg)] = parsed
        while len(self._validated) > _SEEN_MAX:
            self._validated.popitem(last=False)
        return True

    def _count_invalid(self, peer: str) -> int:
        """Disconnect a peer that forwards more than `INVALID_LIMIT` bad messages per window.

        libp2p remembers every message id it sees for minutes, so a garbage flood would
        otherwise grow memory; cutting the flooder off bounds it.
        """
        now = trio.current_time()
        times = self._invalid.setdefault(peer, deque())
        times.append(now)
        while times and now - times[0] > INVALID_WINDOW:
            times.popleft()
        count = len(times)
        if count > INVALID_LIMIT:
            times.clear()
            with contextlib.suppress(trio.WouldBlock):
                self._offenders_tx.send_nowait(peer)
        if len(self._invalid) > _SEEN_MAX:  # bounded: forget the quiet ones
            for quiet in [p for p, t in self._invalid.items() if not t]:
                del self._invalid[quiet]
        return count

    async def _drop_offenders(self) -> None:
        async for peer in self._offenders_rx:
            log.warning("peer %s flooded invalid announcements: disconnecting it", peer)
            self.dropped_peers += 1
            with trio.move_on_after(5):
                try:
                    await self._mesh.host.disconnect(ID.from_base58(peer))
                except Exception as exc:  # already gone
                    log.debug("disconnecting %s: %s", peer, exc)

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Subscribe and hand every new verified announcement to the handler. Runs forever."""
        pubsub = self._mesh.pubsub
        pubsub.set_topic_validator(ANNOUNCE_TOPIC, self._validate, False)
        sub = await pubsub.subscribe(ANNOUNCE_TOPIC)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drop_offenders)
            task_status.started()
            await self._receive(sub)

    async def _receive(self, sub: Any) -> None:
        while True:
            msg = await sub.get()
            try:
                validated = self._validated.pop(_msg_key(msg), None)
                ann, peer_id = validated if validated is not None else self._parse(msg)
            except InfernetError as exc:  # expired between validation and now
                log.debug("announcement went stale: %s", exc)
                continue
            if peer_id == self._mesh.peer_id or not self._remember(ann.event.id):
                continue
            await self._handler(ann, peer_id)

    def _remember(self, event_id: str) -> bool:
        if event_id in self._seen:
            return False
        self._seen[event_id] = None
        if len(self._seen) > _SEEN_MAX:
            self._seen.popitem(last=False)
        return True

    def mesh_peers(self) -> set[str]:
        """Peer ids in our gossipsub mesh for the topic: those a publish reaches at once.

        0.8.1 has no flood-publish, so a peer that joined the topic but is not yet grafted
        misses what we publish; announcers re-publish when this set grows.
        """
        peers = self._mesh.pubsub.router.mesh.get(ANNOUNCE_TOPIC, set())
        return {p.to_base58() for p in peers}

    async def publish(self, data: bytes) -> None:
        """Publish one encoded announcement event.

        Raises:
            TransportError: never; publishing is best effort and failures are logged.
        """
        try:
            with trio.fail_after(5):
                await self._mesh.pubsub.publish(ANNOUNCE_TOPIC, data)
        except Exception as exc:  # libp2p publish errors are not typed; next round retries
            log.warning("publishing announcement failed: %s", exc)
