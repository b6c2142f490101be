"""The table of known peers, keyed by node pubkey, fed only by verified announcements.

Owns: each peer's latest announcement, its peer id, when it was last heard from, whether
a connection to it is open, its measured RTT and its recent job outcomes (bounded). Time is
an argument (monotonic seconds) so the rules are testable.

Invariants: an entry exists only for a verified announcement; a peer is online while a
connection is open and its last announcement is younger than ``offline_after`` (90 s);
an older announcement (by ``created_at``) never replaces a newer one; a key the owner of the
table retired (`retire`: a coordinator learns of key rotations at registration) has no
entry and gets none.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from infernet.protocol.announce import Announcement

__all__ = ["FAILURE_WINDOW", "OFFLINE_AFTER", "OUTCOMES_KEPT", "PeerEntry", "PeerTable"]

OFFLINE_AFTER: Final = 90.0
FAILURE_WINDOW: Final = 300.0  # failures older than this no longer count against a peer
OUTCOMES_KEPT: Final = 32


@dataclass(slots=True)
class PeerEntry:
    """What we know about one node."""

    pubkey: str
    peer_id: str
    announcement: Announcement
    last_seen: float
    connected: bool = True
    rtt_ms: float | None = None
    # (monotonic time, succeeded) of the latest jobs sent to this node, newest last.
    outcomes: deque[tuple[float, bool]] = field(
        default_factory=lambda: deque(maxlen=OUTCOMES_KEPT))

    def failures(self, now: float, window: float = FAILURE_WINDOW) -> int:
        """Jobs this node failed (refused, unreachable, died) within ``window`` seconds."""
        return sum(1 for t, ok in self.outcomes if not ok and now - t < window)

    def serves(self, model: str) -> bool:
        """True when the node's latest announcement offers ``model``."""
        return any(m.name == model for m in self.announcement.caps.models)


class PeerTable:
    """Known nodes and their liveness."""

    def __init__(self, offline_after: float = OFFLINE_AFTER) -> None:
        self._entries: dict[str, PeerEntry] = {}
        self._retired: set[str] = set()
        self._offline_after = offline_after

    def update(self, ann: Announcement, peer_id: str, now: float, *, connected: bool) -> bool:
        """Record a verified announcement; return False when it is older than what we have
        or its key is retired."""
        key = ann.pubkey.hex()
        if key in self._retired:
            return False
        entry = self._entries.get(key)
        if entry is not None and entry.announcement.event.created_at > ann.event.created_at:
            return False
        same = entry is not None and entry.peer_id == peer_id
        rtt = entry.rtt_ms if entry is not None and same else None
        new = PeerEntry(key, peer_id, ann, now, connected, rtt)
        if entry is not None:
            new.outcomes = entry.outcomes  # what a node did survives its re-announcements
        self._entries[key] = new
        return True

    def retire(self, pubkeys: Iterable[str]) -> list[str]:
        """Drop these keys (hex) for good: their entries go, their announcements are refused
        from now on. Returns those that had an entry."""
        dropped = []
        for key in pubkeys:
            self._retired.add(key)
            if self._entries.pop(key, None) is not None:
                dropped.append(key)
        return dropped

    def is_retired(self, pubkey: str) -> bool:
        """True for a key `retire` dropped."""
        return pubkey in self._retired

    def record_outcome(self, pubkey: str, ok: bool, now: float) -> None:
        """Remember whether a job sent to ``pubkey`` succeeded (unknown peers are ignored)."""
        entry = self._entries.get(pubkey)
        if entry is not None:
            entry.outcomes.append((now, ok))

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
