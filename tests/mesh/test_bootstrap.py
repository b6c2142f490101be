"""Parsing a coordinator's bootstrap list: only usable /p2p/ addresses survive."""

from __future__ import annotations

from infernet.mesh.bootstrap import parse_bootstrap

PEER = "16Uiu2HAmLhLvBoYaoZfaMUKuibM6ac163GwKY74c5kiSLg5KvLpY"
GOOD = f"/ip4/127.0.0.1/tcp/46338/p2p/{PEER}"


def test_keeps_p2p_addresses_and_drops_garbage() -> None:
    body = {"coordinator": {"peer_id": PEER, "addrs": [GOOD, "/ip4/1.2.3.4/tcp/1", 7, "nope"]},
            "peers": [{"addrs": [GOOD, None]}, "junk", {"addrs": "not a list"}]}
    assert parse_bootstrap(body) == ([GOOD], [GOOD])


def test_garbage_bodies_give_nothing() -> None:
    for body in (None, [], "x", {"coordinator": "x", "peers": {}}):
        assert parse_bootstrap(body) == ([], [])
