"""The receipt submitter against the real coordinator app in process (httpx's ASGI transport),
including receipts an earlier node key signed before a rotation."""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from infernet.node.receipt_store import ReceiptQueue, ReceiptStatus, ReceiptStore
from infernet.node.receipt_submit import ReceiptSubmitter, RetryLater, SubmitSettings
from infernet.protocol.auth import PUBKEY_HEADER
from infernet.protocol.delegation import ROTATION_GRACE_S
from infernet.protocol.keys import PublicKey, SecretKey
from infernet.protocol.receipt import (
    Receipt,
    SignedReceipt,
    decode_countersigned_receipt,
    decode_signed_receipt,
    receipt_id,
    verify_countersigned_receipt,
)
from tests.coordinator.fakes import FakeNode, Script
from tests.coordinator.harness import COORDINATOR_KEY, Harness, open_harness
from tests.coordinator.test_http_nodes import HOUR, completed_job, late_receipt, rotate

URL = "http://coordinator.test"
FAST = SubmitSettings(timeout=5.0, backoff_min=0.01, backoff_max=0.05, rescan_every=30.0)


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    async with open_harness(tmp_path / "coordinator") as harness:
        yield harness


class Queue(ReceiptQueue):
    """A receipt queue that says when it filed a receipt (tests wait on it, never sleep)."""

    def __init__(self, store: ReceiptStore) -> None:
        super().__init__(store)
        self.filed = trio.Event()

    async def mark_submitted(self, rid: str, envelope: bytes, receipt: Receipt,
                             status: ReceiptStatus, info: dict[str, Any]) -> None:
        await super().mark_submitted(rid, envelope, receipt, status, info)
        self.filed.set()


def asgi(h: Harness) -> httpx.AsyncBaseTransport:
    return httpx.ASGITransport(app=h.client.app)


def b64_signed(raw: str) -> SignedReceipt:
    return decode_signed_receipt(base64.b64decode(raw))


async def fill(tmp_path: Path, receipts: list[SignedReceipt]) -> Queue:
    queue = Queue(ReceiptStore(tmp_path / "node"))
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        for r in receipts:
            queue.add_nowait(r)
        nursery.cancel_scope.cancel()
    return queue


async def submit_once(queue: ReceiptQueue, key: SecretKey,
                      transport: httpx.AsyncBaseTransport, **options: Any) -> int:
    submitter = ReceiptSubmitter(queue, URL, key, settings=FAST, transport=transport,
                                 **options)
    async with httpx.AsyncClient(transport=transport) as client:
        return await submitter.submit_pending(client)


async def test_receipts_are_filed_by_what_the_coordinator_answers(
        h: Harness, tmp_path: Path) -> None:
    node = h.nodes.add(Script(receipt=True))
    routed_id = await completed_job(h)  # countersigned from the final frame already
    final = h.live(routed_id).final
    assert final is not None and final.receipt is not None
    node.script = Script(receipt=False)
    late_id = await completed_job(h)  # the final frame carried no receipt
    receipts = {
        "routed": final.receipt,
        "late": b64_signed(late_receipt(node, late_id)),
        "direct": b64_signed(late_receipt(node, "job_straight_over_the_mesh")),
        "cheat": b64_signed(late_receipt(node, routed_id, output_tokens=300)),
    }
    queue = await fill(tmp_path, list(receipts.values()))
    store = queue.store
    assert await submit_once(queue, node.key, asgi(h)) == 4

    rid: Callable[[str], str] = lambda name: receipt_id(receipts[name].body)  # noqa: E731
    assert store.ids(store.pending) == []
    for name in ("routed", "late"):
        assert store.submitted_status(rid(name)) == "countersigned"
        cs = decode_countersigned_receipt((store.submitted / f"{rid(name)}.cbor").read_bytes())
        verified = verify_countersigned_receipt(cs, coordinator_keys={
            PublicKey.from_hex(COORDINATOR_KEY.public_key.hex())})
        assert verified.receipt_id == rid(name)
    assert store.submitted_status(rid("direct")) == "unwitnessed"
    side = json.loads((store.submitted / f"{rid('direct')}.json").read_text())
    assert (side["status"], side["http_status"]) == ("unwitnessed", 202)
    rejected = json.loads((store.rejected / f"{rid('cheat')}.json").read_text())
    assert (rejected["status"], rejected["http_status"], rejected["code"]) == (
        "rejected", 400, "bad_request")
    assert "this job already has a countersigned receipt" in rejected["message"]
    stats = queue.statistics()
    assert (stats.pending, stats.countersigned, stats.unwitnessed, stats.rejected) == (
        0, 2, 1, 1)
    assert stats.earned["base"] > 0


async def test_an_unannounced_node_and_a_down_coordinator_leave_receipts_pending(
        h: Harness, tmp_path: Path) -> None:
    stranger = FakeNode(SecretKey.generate().even_y(), "peer-stranger", Script())
    queue = await fill(tmp_path, [b64_signed(late_receipt(stranger, "job_direct"))])

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    for transport in (httpx.MockTransport(refuse), asgi(h)):  # down; 401 (never announced)
        with pytest.raises(RetryLater, match=r"unreachable|401"):
            await submit_once(queue, stranger.key, transport)
        assert len(queue.store.ids(queue.store.pending)) == 1
    h.nodes.by_peer[stranger.peer_id] = stranger
    h.nodes.announce(stranger)  # now the coordinator knows its key
    assert await submit_once(queue, stranger.key, asgi(h)) == 1


async def test_the_task_backs_off_until_the_coordinator_answers(
        h: Harness, tmp_path: Path) -> None:
    node = h.nodes.add()
    queue = await fill(tmp_path, [])
    calls: list[int] = []
    real = asgi(h)

    class Flaky(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            calls.append(1)
            if len(calls) <= 3:
                return httpx.Response(503, json={"error": "internal_error"})
            return await real.handle_async_request(request)

    submitter = ReceiptSubmitter(queue, URL, node.key, settings=FAST, transport=Flaky())
    async with trio.open_nursery() as nursery:
        await nursery.start(queue.serve)
        await nursery.start(submitter.serve)
        queue.add_nowait(b64_signed(late_receipt(node, "job_direct")))
        with trio.fail_after(10):
            await queue.filed.wait()
        nursery.cancel_scope.cancel()
    assert len(calls) >= 4 and queue.statistics().unwitnessed == 1


async def test_a_coordinator_under_a_path_prefix_gets_the_signed_target(tmp_path: Path) -> None:
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(400, json={"error": "bad_request", "error_message": "nope"})

    key = SecretKey.generate().even_y()
    node = FakeNode(key, "peer-x", Script())
    queue = await fill(tmp_path, [b64_signed(late_receipt(node, "job_1"))])
    submitter = ReceiptSubmitter(queue, "http://c.test/infernet/", key, settings=FAST,
                                 transport=httpx.MockTransport(answer))
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        assert await submitter.submit_pending(client) == 1
    assert seen == ["/infernet/api/v1/receipts"]
    assert queue.statistics().rejected == 1



# -- receipts an earlier node key signed ---------------------------------------------------


def rid_of(signed: SignedReceipt) -> str:
    return receipt_id(signed.body)


def rejection(queue: ReceiptQueue, signed: SignedReceipt) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        (queue.store.rejected / f"{rid_of(signed)}.json").read_text())
    return doc


def no_request(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"the node sent {request.method} {request.url}")


async def test_an_earlier_keys_receipt_goes_out_under_the_current_key(
        h: Harness, tmp_path: Path) -> None:
    old = h.nodes.add(Script(receipt=False))
    job_id = await completed_job(h)
    now = int(time.time())
    new = await rotate(h, old, rotated_at=now - HOUR)
    earlier = b64_signed(late_receipt(old, job_id, completed_at=now - 2 * HOUR))
    current = b64_signed(late_receipt(new, "job_straight_over_the_mesh"))
    queue = await fill(tmp_path, [earlier, current])
    seen: list[str | None] = []
    real = asgi(h)

    class Watch(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            seen.append(request.headers.get(PUBKEY_HEADER))
            return await real.handle_async_request(request)

    assert await submit_once(queue, new.key, Watch(), retired={old.pubkey: now - HOUR}) == 2
    store = queue.store
    assert store.submitted_status(rid_of(earlier)) == "countersigned"
    cs = decode_countersigned_receipt(
        (store.submitted / f"{rid_of(earlier)}.cbor").read_bytes())
    verify_countersigned_receipt(cs, coordinator_keys={
        PublicKey.from_hex(COORDINATOR_KEY.public_key.hex())})
    assert store.submitted_status(rid_of(current)) == "unwitnessed"
    assert sorted(seen, key=str) == sorted([new.pubkey, None], key=str)  # named only for one


async def test_a_spent_grace_refused_by_the_coordinator_is_filed_rejected_and_logged_once(
        h: Harness, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old = h.nodes.add(Script(receipt=False))
    job_id = await completed_job(h)
    rotated_at = int(time.time()) - ROTATION_GRACE_S - HOUR
    new = await rotate(h, old, rotated_at=rotated_at)
    spent = b64_signed(late_receipt(old, job_id, completed_at=rotated_at - HOUR))
    queue = await fill(tmp_path, [spent])
    # This node's clock says the grace still runs; the coordinator's clock decides.
    options = {"retired": {old.pubkey: rotated_at}, "clock": lambda: rotated_at + HOUR}
    with caplog.at_level(logging.WARNING, logger="infernet.node.receipts"):
        assert await submit_once(queue, new.key, asgi(h), **options) == 1
        assert await submit_once(queue, new.key, asgi(h), **options) == 0  # nothing left
    doc = rejection(queue, spent)
    assert (doc["status"], doc["http_status"], doc["code"]) == ("rejected", 400, "bad_request")
    assert "24 h grace period is over" in doc["message"]
    assert queue.store.ids(queue.store.pending) == []
    lines = [r.getMessage() for r in caplog.records if rid_of(spent)[:12] in r.getMessage()]
    assert len(lines) == 1 and "rejected by the coordinator (400 bad_request)" in lines[0]


async def test_a_spent_grace_is_filed_rejected_on_the_node_without_a_request(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old, new = SecretKey.generate().even_y(), SecretKey.generate().even_y()
    now = 1_900_000_000
    rotated_at = now - ROTATION_GRACE_S - 61  # past the grace and the minute's margin
    signer = FakeNode(old, "peer-old", Script())
    spent = b64_signed(late_receipt(signer, "job_a", completed_at=rotated_at - HOUR))
    late = b64_signed(late_receipt(signer, "job_b", completed_at=now - HOUR))
    stranger = FakeNode(SecretKey.generate().even_y(), "peer-x", Script())
    foreign = b64_signed(late_receipt(stranger, "job_c"))
    queue = await fill(tmp_path, [spent, late, foreign])
    with caplog.at_level(logging.WARNING, logger="infernet.node.receipts"):
        assert await submit_once(queue, new, httpx.MockTransport(no_request),
                                 retired={old.public_key.hex(): rotated_at},
                                 clock=lambda: now) == 3
    for signed, why in ((spent, "24 h grace period is over"),
                        (late, "after it was rotated away"),
                        (foreign, "neither this node's key nor one it rotated away")):
        doc = rejection(queue, signed)
        assert (doc["http_status"], doc["code"]) == (0, "bad_request")  # decided here
        assert why in doc["message"] and "not sent" in doc["message"]
    assert len([r for r in caplog.records if "rejected by this node" in r.getMessage()]) == 3
    # At the edge of the grace the node still asks: the coordinator's clock decides.
    edge = b64_signed(late_receipt(signer, "job_d", completed_at=rotated_at - HOUR))
    queue = await fill(tmp_path / "edge", [edge])
    with pytest.raises(RetryLater):
        await submit_once(queue, new, httpx.MockTransport(
            lambda r: httpx.Response(503, json={})), retired={old.public_key.hex(): rotated_at},
            clock=lambda: rotated_at + ROTATION_GRACE_S + 30)


async def test_without_a_chain_an_earlier_keys_receipt_is_left_to_the_coordinator(
        h: Harness, tmp_path: Path) -> None:
    node = h.nodes.add()
    stranger = FakeNode(SecretKey.generate().even_y(), "peer-stranger", Script())
    queue = await fill(tmp_path, [b64_signed(late_receipt(stranger, "job_direct"))])
    with pytest.raises(RetryLater, match="cannot link to us yet"):  # 401: kept pending
        await submit_once(queue, node.key, asgi(h), retired=None)
    assert len(queue.store.ids(queue.store.pending)) == 1


async def test_a_401_for_an_earlier_keys_receipt_holds_back_only_that_receipt(
        h: Harness, tmp_path: Path) -> None:
    old = h.nodes.add(Script(receipt=False))
    job_id = await completed_job(h)
    new = h.nodes.add()  # announces, but has not registered its chain yet
    now = int(time.time())
    earlier = b64_signed(late_receipt(old, job_id, completed_at=now - 2 * HOUR))
    current = b64_signed(late_receipt(new, "job_straight_over_the_mesh"))
    queue = await fill(tmp_path, [earlier, current])
    retired = {old.pubkey: now - HOUR}
    with pytest.raises(RetryLater, match=r"cannot link to us yet .*not registered"):
        await submit_once(queue, new.key, asgi(h), retired=retired)
    assert queue.store.ids(queue.store.pending) == [rid_of(earlier)]
    assert queue.store.submitted_status(rid_of(current)) == "unwitnessed"
    await rotate(h, old, rotated_at=now - HOUR, new=new)  # the daemon registers at start
    assert await submit_once(queue, new.key, asgi(h), retired=retired) == 1
    assert queue.store.submitted_status(rid_of(earlier)) == "countersigned"
