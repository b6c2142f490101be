"""Choosing candidates: model match, pinned weights, price cap, free slots, RTT, errors."""

from __future__ import annotations

import time

import pytest

from infernet.mesh.peer_table import FAILURE_WINDOW, OUTCOMES_KEPT, PeerTable
from infernet.mesh.routing import candidates
from infernet.protocol.announce import (
    Capabilities,
    ModelOffer,
    build_announcement,
    parse_announcement,
)
from infernet.protocol.errors import InfernetError
from infernet.protocol.event import encode_event
from infernet.protocol.keys import SecretKey

NOW = int(time.time())


def _add(table: PeerTable, *, slots: int = 1, weights: str = "", price: float = 0.0,
         model: str = "m", rtt: float | None = None, peer: str | None = None,
         draining: bool = False) -> str:
    key = SecretKey.generate()
    caps = Capabilities(backend="t", models=(ModelOffer(name=model, weights_hash=weights,
                                                        price_per_1k_output=price),),
                        slots_total=slots, slots_free=slots, draining=draining,
                        expires_at=NOW + 60)
    ann = parse_announcement(encode_event(build_announcement(caps, key, NOW)), now=NOW,
                             sender_pubkey=key.public_key)
    peer_id = peer or key.public_key.hex()[:16]
    table.update(ann, peer_id, 0.0, connected=True)
    if rtt is not None:
        table.set_rtt(peer_id, rtt)
    return key.public_key.hex()


def test_most_free_slots_first_then_lowest_rtt() -> None:
    table = PeerTable()
    far = _add(table, slots=2, rtt=80)
    near = _add(table, slots=2, rtt=5)
    busy = _add(table, slots=1, rtt=1)
    unmeasured = _add(table, slots=2)
    order = [e.pubkey for e in candidates(table, "m", 1.0)]
    assert order == [near, far, unmeasured, busy]


def test_recent_failures_rank_a_node_after_healthy_ones_until_they_age_out() -> None:
    table = PeerTable(offline_after=1e9)  # only the failure window's ageing is tested here
    flaky = _add(table, slots=2, rtt=1)
    steady = _add(table, slots=2, rtt=50)
    table.record_outcome(flaky, False, 10.0)
    table.record_outcome(steady, True, 10.0)
    assert [e.pubkey for e in candidates(table, "m", 11.0)] == [steady, flaky]
    assert [e.pubkey for e in candidates(table, "m", 10.0 + FAILURE_WINDOW)] == [flaky, steady]


def test_outcomes_survive_a_re_announcement_and_stay_bounded() -> None:
    table = PeerTable()
    pub = _add(table)
    for i in range(100):
        table.record_outcome(pub, False, float(i))
    entry = table.get(pub)
    assert entry is not None and entry.failures(100.0) == OUTCOMES_KEPT
    table.update(entry.announcement, entry.peer_id, 101.0, connected=True)
    again = table.get(pub)
    assert again is not None and again is not entry and again.failures(101.0) == OUTCOMES_KEPT
    table.record_outcome("unknown", False, 1.0)  # a peer we never heard of: nothing to keep
    assert table.get("unknown") is None


def test_draining_nodes_are_skipped_and_only_draining_ones_mean_no_capacity() -> None:
    table = PeerTable()
    _add(table, slots=8, draining=True)
    staying = _add(table, slots=1)
    assert [e.pubkey for e in candidates(table, "m", 1.0)] == [staying]
    only_draining = PeerTable()
    _add(only_draining, draining=True)
    with pytest.raises(InfernetError) as exc:
        candidates(only_draining, "m", 1.0)
    assert exc.value.code == "no_capacity" and "shutting down" in str(exc.value)


def test_weights_pin_and_price_cap() -> None:
    table = PeerTable()
    cheap_a = _add(table, weights="sha256:aa", price=0.001)
    dear_a = _add(table, weights="sha256:aa", price=0.05)
    _add(table, weights="sha256:bb", price=0.0)
    pinned = candidates(table, "m", 1.0, weights_hash="sha256:aa", max_price=0.01)
    assert [e.pubkey for e in pinned] == [cheap_a]
    both = {e.pubkey for e in candidates(table, "m", 1.0, weights_hash="sha256:aa")}
    assert both == {cheap_a, dear_a}
    with pytest.raises(InfernetError) as other:
        candidates(table, "m", 1.0, weights_hash="sha256:cc")
    assert other.value.code == "model_not_found"
    with pytest.raises(InfernetError) as too_dear:
        candidates(table, "m", 1.0, weights_hash="sha256:aa", max_price=0.0001)
    assert too_dear.value.code == "no_capacity"


def test_no_node_online_and_unknown_model() -> None:
    table = PeerTable()
    with pytest.raises(InfernetError) as empty:
        candidates(table, "m", 1.0)
    assert empty.value.code == "no_capacity"
    node = _add(table)
    with pytest.raises(InfernetError) as unknown:
        candidates(table, "other", 1.0)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(InfernetError) as excluded:
        candidates(table, "m", 1.0, exclude={node})
    assert excluded.value.code == "no_capacity"
