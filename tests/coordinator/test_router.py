"""coordinator.router: candidates, score, slot accounting, the FIFO wait queue, backoff.

Time is trio's clock; waits run on the autojump MockClock (virtual seconds, no sleeping).
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from coordinator.router import BUSY_BACKOFF, BUSY_BACKOFF_MAX, Router
from infernet.mesh.peer_table import PeerTable
from infernet.protocol.errors import InfernetError
from tests.coordinator.fakes import MODEL, FakeNodes


def setup() -> tuple[Router, FakeNodes]:
    table = PeerTable()
    return Router(table), FakeNodes(table)


async def test_unknown_model_and_empty_network() -> None:
    router, nodes = setup()
    with pytest.raises(InfernetError) as empty:
        router.ranked(MODEL, trio.current_time())
    assert empty.value.code == "no_capacity"
    nodes.add()
    with pytest.raises(InfernetError) as unknown:
        router.ranked("other", trio.current_time())
    assert unknown.value.code == "model_not_found"


async def test_more_free_slots_then_fewer_failures_then_lower_price() -> None:
    router, nodes = setup()
    small = nodes.add(slots=1)
    big = nodes.add(slots=4)
    assert [e.pubkey for e in router.ranked(MODEL, trio.current_time())] == [big.pubkey,
                                                                           small.pubkey]
    router2, nodes2 = setup()
    cheap = nodes2.add(price=0.1)
    dear = nodes2.add(price=0.5)
    assert router2.ranked(MODEL, trio.current_time())[0].pubkey == cheap.pubkey
    entry = await router2.acquire(MODEL, trio.current_time())
    assert entry.pubkey == cheap.pubkey
    router2.release(cheap.pubkey, failed=True)  # a failure outweighs the price
    assert router2.ranked(MODEL, trio.current_time())[0].pubkey == dear.pubkey


async def test_a_draining_node_gets_no_new_job_and_the_job_waits_then_503() -> None:
    router, nodes = setup()
    leaving = nodes.add(slots=4)
    staying = nodes.add(slots=1)
    nodes.announce(leaving, slots=4, draining=True)
    assert [e.pubkey for e in router.ranked(MODEL, trio.current_time())] == [staying.pubkey]
    nodes.announce(staying, slots=1, draining=True)
    assert router.ranked(MODEL, trio.current_time()) == []
    with pytest.raises(InfernetError) as busy:
        await router.acquire(MODEL, trio.current_time() + 0.3)
    assert busy.value.code == "no_capacity"


async def test_ties_are_broken_at_random() -> None:
    router, nodes = setup()
    a, b = nodes.add(), nodes.add()
    firsts = {router.ranked(MODEL, trio.current_time())[0].pubkey for _ in range(200)}
    assert firsts == {a.pubkey, b.pubkey}


async def test_slots_are_held_and_given_back() -> None:
    router, nodes = setup()
    node = nodes.add(slots=2)
    now = trio.current_time()
    await router.acquire(MODEL, now)
    await router.acquire(MODEL, now)
    assert router.ranked(MODEL, now) == [] and router.inflight() == 2
    router.release(node.pubkey)
    assert [e.pubkey for e in router.ranked(MODEL, now)] == [node.pubkey]


async def test_waiting_jobs_get_slots_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router, nodes = setup()
    node = nodes.add(slots=1)
    await router.acquire(MODEL, trio.current_time())
    order: list[int] = []

    async def wait(i: int) -> None:
        await router.acquire(MODEL, trio.current_time() + 100)
        order.append(i)

    async with trio.open_nursery() as nursery:
        for i in range(3):
            nursery.start_soon(wait, i)
            await trio.testing.wait_all_tasks_blocked()
        assert router.queued() == 3
        for _ in range(3):
            router.release(node.pubkey)
            await trio.testing.wait_all_tasks_blocked()
    assert order == [0, 1, 2]


async def test_a_full_model_in_line_does_not_hold_up_jobs_for_other_nodes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router, nodes = setup()
    full = nodes.add(slots=1, models=(MODEL,))
    other = nodes.add(slots=1, models=("other",))
    await router.acquire(MODEL, trio.current_time())
    await router.acquire("other", trio.current_time())
    served: list[str] = []

    async def wait(model: str, exclude: frozenset[str] = frozenset()) -> None:
        entry = await router.acquire(model, trio.current_time() + 100, exclude=exclude)
        served.append(f"{model}@{entry.pubkey[:6]}")

    async with trio.open_nursery() as nursery:
        for _ in range(3):  # three jobs for the busy node first in line
            nursery.start_soon(wait, MODEL)
            await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(wait, "other", frozenset({full.pubkey}))
        await trio.testing.wait_all_tasks_blocked()
        router.release(other.pubkey)
        await trio.testing.wait_all_tasks_blocked()
        assert served == [f"other@{other.pubkey[:6]}"] and router.queued() == 3
        for _ in range(3):
            router.release(full.pubkey)
            await trio.testing.wait_all_tasks_blocked()
    assert served[1:] == [f"{MODEL}@{full.pubkey[:6]}"] * 3


async def test_a_wait_ends_with_no_capacity_at_its_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router, nodes = setup()
    nodes.add(slots=1)
    await router.acquire(MODEL, trio.current_time())
    start = trio.current_time()
    with pytest.raises(InfernetError) as exc:
        await router.acquire(MODEL, start + 5)
    assert exc.value.code == "no_capacity"
    assert trio.current_time() - start == pytest.approx(5, abs=0.3)
    assert router.queued() == 0


async def test_a_refusing_node_backs_off_longer_each_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    router, nodes = setup()
    node = nodes.add(slots=4)
    for expected in (BUSY_BACKOFF, 2 * BUSY_BACKOFF, 4 * BUSY_BACKOFF):
        entry = await router.acquire(MODEL, trio.current_time() + 100)
        refused_at = trio.current_time()
        router.release(entry.pubkey, busy=True)
        await router.acquire(MODEL, trio.current_time() + 100)  # waits the pause out
        assert trio.current_time() - refused_at == pytest.approx(expected, abs=0.3)
        # the slot stays held: being let in again is not yet a job that ran
    router.release(node.pubkey)  # a job that ran: the streak is over
    entry = await router.acquire(MODEL, trio.current_time() + 100)
    refused_at = trio.current_time()
    router.release(entry.pubkey, busy=True)
    await router.acquire(MODEL, trio.current_time() + 100)
    assert trio.current_time() - refused_at == pytest.approx(BUSY_BACKOFF, abs=0.3)
    assert BUSY_BACKOFF_MAX > 4 * BUSY_BACKOFF


async def test_an_announcement_with_no_free_slot_parks_an_idle_node() -> None:
    router, nodes = setup()
    node = nodes.add(slots=2)
    other = nodes.add(slots=1)
    nodes.announce(node, slots=2, free=0)  # draining, or busy with other clients
    router.notify(router.table.get(node.pubkey))
    assert [e.pubkey for e in router.ranked(MODEL, trio.current_time())] == [other.pubkey]
    nodes.announce(node, slots=2)  # free again: its own word counts
    router.notify(router.table.get(node.pubkey))
    assert node.pubkey in [e.pubkey for e in router.ranked(MODEL, trio.current_time())]
