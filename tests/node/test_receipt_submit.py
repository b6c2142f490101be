"""The receipt submitter against the real coordinator app in process (httpx's ASGI transport)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from infernet.node.receipt_store import ReceiptQueue, ReceiptStatus, ReceiptStore
from infernet.node.receipt_submit import ReceiptSubmitter, RetryLater, SubmitSettings
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
from tests.coordinator.test_http_nodes import completed_job, late_receipt

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
                      transport: httpx.AsyncBaseTransport) -> int:
    submitter = ReceiptSubmitter(queue, URL, key, settings=FAST, transport=transport)
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

