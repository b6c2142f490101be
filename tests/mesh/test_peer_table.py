"""Tests for infernet.mesh.peer_table: liveness and replacement rules, fed real announcements.

The table takes time as an argument, so no clock is involved: ``T0`` is a monotonic reading
and the announcements' ``created_at`` are unix seconds, as in production.
"""

from __future__ import annotations

import pytest

from infernet.mesh.peer_table import OFFLINE_AFTER, PeerEntry, PeerTable
from infernet.protocol.announce import (
    Announcement,
    Capabilities,
    ModelOffer,
    build_announcement,
    parse_announcement,
)
from infernet.protocol.event import encode_event
from infernet.protocol.keys import SecretKey

KEY_A = SecretKey.from_hex("e108399bd8424357a710b606ae0c13166d853d327e47a6e5e038197346bdbf45")
KEY_B = SecretKey.from_hex("0beebd062ec8735f4243466049d7747ef5d6594ee838de147f8aab842b15e273")
PEER_A = "16Uiu2HAmPeerA"
PEER_B = "16Uiu2HAmPeerB"
UNIX = 1_800_000_000  # announcement times (unix seconds)
T0 = 5_000.0  # receive times (monotonic seconds)


def announcement(
    key: SecretKey, models: tuple[str, ...] = ("gemma3-270m",), *, created_at: int = UNIX,
    slots_free: int = 1,
) -> Announcement:
    """Build, sign, encode and parse an announcement, as a receiver would get it."""
    caps = Capabilities(
        backend="llama.cpp",
        models=tuple(ModelOffer(name=m) for m in models),
        slots_total=2,
        slots_free=slots_free,
        expires_at=created_at + 300,
    )
    event = build_announcement(caps, key, created_at, aux=bytes(32))
    return parse_announcement(
        encode_event(event), now=created_at, sender_pubkey=key.public_key
    )


def pubkeys(entries: list[PeerEntry]) -> set[str]:
    return {e.pubkey for e in entries}


def test_offline_after_is_90_seconds() -> None:
    assert OFFLINE_AFTER == 90.0


def test_update_records_a_verified_announcement() -> None:
    table = PeerTable()
    ann = announcement(KEY_A)
    assert len(table) == 0
    assert table.update(ann, PEER_A, T0, connected=True) is True
    assert len(table) == 1

    entry = table.get(KEY_A.public_key.hex())
    assert entry is not None
    assert entry.pubkey == KEY_A.public_key.hex()
    assert entry.peer_id == PEER_A
    assert entry.announcement is ann
    assert entry.last_seen == T0
    assert entry.connected is True
    assert table.get(KEY_B.public_key.hex()) is None


def test_a_fresh_connected_peer_is_online_and_serving_its_models() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A, ("gemma3-270m", "llama3:8b")), PEER_A, T0, connected=True)
    table.update(announcement(KEY_B, ("qwen2:7b",)), PEER_B, T0, connected=True)
    a, b = KEY_A.public_key.hex(), KEY_B.public_key.hex()

    assert pubkeys(table.online(T0)) == {a, b}
    assert pubkeys(table.serving("gemma3-270m", T0)) == {a}
    assert pubkeys(table.serving("llama3:8b", T0)) == {a}
    assert pubkeys(table.serving("qwen2:7b", T0)) == {b}
    assert table.serving("gemma3", T0) == []  # exact names only, no prefix match
    assert table.serving("missing", T0) == []


def test_peer_goes_offline_90_seconds_after_its_last_announcement() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A), PEER_A, T0, connected=True)
    entry = table.get(KEY_A.public_key.hex())
    assert entry is not None

    assert table.is_online(entry, T0 + 89.999)
    assert len(table.online(T0 + 89.999)) == 1
    assert len(table.serving("gemma3-270m", T0 + 89.999)) == 1

    assert not table.is_online(entry, T0 + 90.0)
    assert table.online(T0 + 90.0) == []
    assert table.serving("gemma3-270m", T0 + 90.0) == []
    assert table.get(KEY_A.public_key.hex()) is entry  # known, just offline
    assert len(table) == 1


def test_a_new_announcement_restarts_the_90_seconds() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A, created_at=UNIX), PEER_A, T0, connected=True)
    table.update(announcement(KEY_A, created_at=UNIX + 60), PEER_A, T0 + 60, connected=True)
    assert len(table.online(T0 + 149.0)) == 1
    assert table.online(T0 + 150.0) == []


def test_peers_age_independently() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A), PEER_A, T0, connected=True)
    table.update(announcement(KEY_B), PEER_B, T0 + 30, connected=True)
    assert pubkeys(table.online(T0 + 100)) == {KEY_B.public_key.hex()}
    assert table.online(T0 + 120) == []


def test_offline_after_is_configurable() -> None:
    table = PeerTable(offline_after=10.0)
    table.update(announcement(KEY_A), PEER_A, T0, connected=True)
    assert len(table.online(T0 + 9.5)) == 1
    assert table.online(T0 + 10.0) == []


def test_mark_disconnected_takes_the_peer_offline_at_once() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A), PEER_A, T0, connected=True)
    table.update(announcement(KEY_B), PEER_B, T0, connected=True)

    assert table.mark_disconnected(PEER_A) == [KEY_A.public_key.hex()]

    assert pubkeys(table.online(T0)) == {KEY_B.public_key.hex()}  # same instant, no timeout
    assert table.serving("gemma3-270m", T0) == [table.get(KEY_B.public_key.hex())]
    entry = table.get(KEY_A.public_key.hex())
    assert entry is not None
    assert entry.connected is False
    assert len(table) == 2


def test_mark_disconnected_reports_each_peer_once() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A), PEER_A, T0, connected=True)
    assert table.mark_disconnected(PEER_A) == [KEY_A.public_key.hex()]
    assert table.mark_disconnected(PEER_A) == []
    assert table.mark_disconnected("16Uiu2HAmUnknown") == []


def test_mark_disconnected_covers_every_node_behind_one_peer_id() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A), PEER_A, T0, connected=True)
    table.update(announcement(KEY_B), PEER_A, T0, connected=True)
    assert set(table.mark_disconnected(PEER_A)) == {
        KEY_A.public_key.hex(), KEY_B.public_key.hex()
    }
    assert table.online(T0) == []


def test_announcement_without_a_connection_is_not_online() -> None:
    table = PeerTable()
    assert table.update(announcement(KEY_A), PEER_A, T0, connected=False) is True
    assert len(table) == 1
    assert table.online(T0) == []


def test_a_newer_announcement_after_reconnecting_brings_the_peer_back() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A, created_at=UNIX), PEER_A, T0, connected=True)
    table.mark_disconnected(PEER_A)
    assert table.online(T0 + 1) == []
    table.update(announcement(KEY_A, created_at=UNIX + 5), PEER_A, T0 + 5, connected=True)
    assert pubkeys(table.online(T0 + 5)) == {KEY_A.public_key.hex()}


def test_a_newer_announcement_replaces_models_and_peer_id() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A, ("gemma3-270m",), created_at=UNIX), PEER_A, T0,
                 connected=True)
    newer = announcement(KEY_A, ("llama3:8b",), created_at=UNIX + 30)
    assert table.update(newer, PEER_B, T0 + 30, connected=True) is True

    entry = table.get(KEY_A.public_key.hex())
    assert entry is not None
    assert entry.announcement is newer
    assert entry.peer_id == PEER_B
    assert entry.last_seen == T0 + 30
    assert table.serving("gemma3-270m", T0 + 30) == []
    assert table.serving("llama3:8b", T0 + 30) == [entry]
    assert len(table) == 1


def test_an_older_announcement_does_not_replace_a_newer_one() -> None:
    table = PeerTable()
    newer = announcement(KEY_A, ("llama3:8b",), created_at=UNIX + 30, slots_free=0)
    older = announcement(KEY_A, ("gemma3-270m",), created_at=UNIX)
    table.update(newer, PEER_A, T0, connected=True)

    assert table.update(older, PEER_B, T0 + 50, connected=True) is False

    entry = table.get(KEY_A.public_key.hex())
    assert entry is not None
    assert entry.announcement is newer
    assert entry.announcement.caps.slots_free == 0
    assert entry.peer_id == PEER_A
    assert entry.last_seen == T0  # a stale replay does not keep the peer alive either
    assert table.serving("gemma3-270m", T0 + 50) == []
    assert table.online(T0 + 90) == []


@pytest.mark.parametrize("connected", [True, False])
def test_an_older_announcement_does_not_change_connectedness(connected: bool) -> None:
    table = PeerTable()
    table.update(announcement(KEY_A, created_at=UNIX + 30), PEER_A, T0, connected=connected)
    table.update(announcement(KEY_A, created_at=UNIX), PEER_A, T0, connected=not connected)
    entry = table.get(KEY_A.public_key.hex())
    assert entry is not None
    assert entry.connected is connected


def test_an_announcement_with_the_same_created_at_is_accepted() -> None:
    table = PeerTable()
    first = announcement(KEY_A, created_at=UNIX)
    again = announcement(KEY_A, ("llama3:8b",), created_at=UNIX)
    table.update(first, PEER_A, T0, connected=True)
    assert table.update(again, PEER_A, T0 + 10, connected=True) is True
    entry = table.get(KEY_A.public_key.hex())
    assert entry is not None
    assert entry.announcement is again
    assert entry.last_seen == T0 + 10


def test_entry_serves_matches_model_names_exactly() -> None:
    table = PeerTable()
    table.update(announcement(KEY_A, ("gemma3-270m", "llama3:8b")), PEER_A, T0, connected=True)
    entry = table.get(KEY_A.public_key.hex())
    assert entry is not None
    assert entry.serves("gemma3-270m")
    assert entry.serves("llama3:8b")
    assert not entry.serves("llama3")
    assert not entry.serves("")


def test_a_retired_key_leaves_the_table_and_stays_out() -> None:
    table = PeerTable()
    a, b = KEY_A.public_key.hex(), KEY_B.public_key.hex()
    table.update(announcement(KEY_A), PEER_A, T0, connected=True)
    table.update(announcement(KEY_B), PEER_B, T0, connected=True)
    assert table.retire([a, "00" * 32]) == [a]  # only keys that had an entry are reported
    assert table.is_retired(a) and not table.is_retired(b)
    assert pubkeys(table.online(T0)) == {b}
    # Even a newer announcement of the retired key is refused.
    assert table.update(announcement(KEY_A, created_at=UNIX + 60), PEER_A, T0 + 60,
                        connected=True) is False
    assert table.get(a) is None and len(table) == 1
