"""The table of known peers, keyed by node pubkey, fed only by verified announcements.

Owns: each peer's latest announcement, its peer id, when it was last heard from, and whether
a connection to it is open. Time is an argument (monotonic seconds) so the rules are testable.

Invariants: an entry exists only for a verified announcement; a peer is online while a
connection is open and its last announcement is younger than ``offline_after`` (90 s);
an older announcement (by ``created_at``) never replaces a newer one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from infernet.protocol.announce import Announcement

__all__ = ["OFFLINE_AFTER", "PeerEntry", "PeerTable"]

OFFLINE_AFTER: Final = 90.0


@dataclass(slots=True)
class PeerEntry:
    """What we know about one node."""

    pubkey: str
    peer_id: str
    announcement: Announcement
    last_seen: float
    connected: bool = True
    rtt_ms: float | None = None

    def serves(self, model: str) -> bool:
        """True when the node's latest announcement offers ``model``."""
        return any(m.name == model for m in self.announcement.caps.models)


class PeerTable:
    """Known nodes and their liveness."""

    def __init__(self, offline_after: float = OFFLINE_AFTER) -> None:
        self._entries: dict[str, PeerEntry] = {}
        self._offline_after = offline_after

    def update(self, ann: Announcement, peer_id: str, now: float, *, connected: bool) -> bool:
        """Record a verified announcement; return False when it is older than what we have."""
        key = ann.pubkey.hex()
        entry = self._entries.get(key)
        if entry is not None and entry.announcement.event.created_at > ann.event.created_at:
            return False
        rtt = entry.rtt_ms if entry is not None and entry.peer_id == peer_id else None
        self._entries[key] = PeerEntry(key, peer_id, ann, now, connected, rtt)
        return True

    def set_rtt(self, peer_id: str, rtt_ms: float) -> None:
        """Record a measured round-trip time to ``peer_id``."""
        for entry in self._entries.values():
            if entry.peer_id == peer_id:
                entry.rtt_ms = rtt_ms

    def mark_disconnected(self, peer_id: str) -> list[str]:
        """Mark every entry reached through ``peer_id`` offline; return their pubkeys."""
        gone = [e.pubkey for e in self._entries.values() if e.peer_id == peer_id and e.connected]
        for key in gone:
            self._entries[key].connected = False
        return gone

    def is_online(self, entry: PeerEntry, now: float) -> bool:
        """True while connected and heard from within ``offline_after``."""
        return entry.connected and now - entry.last_seen < self._offline_after

    def online(self, now: float) -> list[PeerEntry]:
        """Every online node."""
        return [e for e in self._entries.values() if self.is_online(e, now)]

    def serving(self, model: str, now: float) -> list[PeerEntry]:
        """Online nodes whose announcement offers ``model``."""
        return [e for e in self.online(now) if e.serves(model)]

    def get(self, pubkey: str) -> PeerEntry | None:
        """The entry for ``pubkey`` (hex), online or not."""
        return self._entries.get(pubkey)

    def __len__(self) -> int:
        return len(self._entries)
