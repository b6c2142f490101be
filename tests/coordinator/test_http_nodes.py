"""Node-facing routes (X-Infernet-Auth): late receipts, balance, payouts, and auth failures."""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import trio

from coordinator.receipts import ReceiptRecord
from infernet.protocol.auth import sign_request
from infernet.protocol.pricing import job_value, rates_for_model
from infernet.protocol.receipt import (
    Receipt,
    decode_signed_receipt,
    encode_receipt,
    output_hash,
    prompt_hash,
    sign_receipt,
    verify_receipt,
)
from tests.coordinator.fakes import MODEL, FakeNode, Script
from tests.coordinator.harness import FAST, Harness, open_harness

USER = [{"role": "user", "content": "What is the capital of France?"}]


def signed_headers(node: FakeNode, method: str, target: str, body: bytes = b"", *,
                   timestamp: int | None = None, nonce: bytes | None = None) -> dict[str, str]:
    value = sign_request(node.key, method=method, target=target, body=body,
                         nonce=nonce or secrets.token_bytes(16),
                         timestamp=int(time.time()) if timestamp is None else timestamp)
    return {"X-Infernet-Auth": value, "Content-Type": "application/json"}


async def node_post(h: Harness, node: FakeNode, target: str, body: dict[str, Any]) -> Any:
    raw = json.dumps(body).encode()
    return await h.client.post(target, data=raw, headers=signed_headers(node, "POST", target,
                                                                        raw))


async def node_get(h: Harness, node: FakeNode, target: str) -> Any:
    return await h.client.get(target, headers=signed_headers(node, "GET", target))


async def completed_job(h: Harness) -> str:
    r = await h.post_json("/api/v1/jobs", {"model": MODEL, "messages": USER})
    job_id: str = (await r.get_json())["id"]
    await h.finished(job_id)
    return job_id


def late_receipt(node: FakeNode, job_id: str, output_tokens: int = 3) -> str:
    text = "".join(node.script.texts)
    receipt = Receipt(
        job_id=job_id, node_pubkey=node.pubkey, model=MODEL, input_tokens=7,
        output_tokens=output_tokens, completed_at=1_800_000_000,
        value=job_value(7, output_tokens, rates_for_model(MODEL)), chain="base",
        prompt_hash=prompt_hash(_Msg(m["role"], m["content"]) for m in USER),
        output_hash=output_hash(text))
    return base64.b64encode(encode_receipt(sign_receipt(receipt, node.key))).decode()


class _Msg:
    def __init__(self, role: str, content: str) -> None:
        self.role, self.content = role, content


async def test_a_late_receipt_is_checked_and_countersigned(h: Harness) -> None:
    node = h.nodes.add(Script(receipt=False))
    job_id = await completed_job(h)
    job = await (await h.get(f"/api/v1/jobs/{job_id}")).get_json()
    assert job["infernet"]["receipt_id"] is None

    r = await node_post(h, node, "/api/v1/receipts", {"receipt": late_receipt(node, job_id)})
    assert r.status_code == 201, await r.get_data()
    cpr = await r.get_json()
    assert (cpr["status"], cpr["job_id"]) == ("countersigned", job_id)
    job = await (await h.get(f"/api/v1/jobs/{job_id}")).get_json()
    assert job["infernet"]["receipt_id"] == cpr["id"]

    again = await node_post(h, node, "/api/v1/receipts", {"receipt": late_receipt(node, job_id)})
    assert again.status_code == 200  # the same receipt again: already countersigned
    assert (await again.get_json())["id"] == cpr["id"]
    different = await node_post(h, node, "/api/v1/receipts",
                                {"receipt": late_receipt(node, job_id, output_tokens=4)})
    assert different.status_code == 400


async def test_a_late_receipt_that_overstates_the_work_is_rejected(h: Harness) -> None:
    node = h.nodes.add(Script(receipt=False))
    job_id = await completed_job(h)
    r = await node_post(h, node, "/api/v1/receipts",
                        {"receipt": late_receipt(node, job_id, output_tokens=300)})
    assert r.status_code == 400
    assert "output_tokens" in (await r.get_json())["error_message"]


async def test_a_node_cannot_send_a_receipt_for_anothers_job(h: Harness) -> None:
    h.nodes.add(Script(receipt=False), slots=8)
    other = h.nodes.add(Script(receipt=False), slots=1)
    job_id = await completed_job(h)
    r = await node_post(h, other, "/api/v1/receipts", {"receipt": late_receipt(other, job_id)})
    assert r.status_code == 400 and "no completed job" in (await r.get_json())["error_message"]


async def test_node_auth_failures_are_401(h: Harness) -> None:
    node = h.nodes.add()
    stranger = h.nodes.add()
    target = f"/api/v1/nodes/{node.pubkey}/balance"
    assert (await h.client.get(target)).status_code == 401  # no header
    r = await h.client.get(target, headers=signed_headers(stranger, "GET", target))
    assert r.status_code == 401  # signed by another node's key
    stale = signed_headers(node, "GET", target, timestamp=int(time.time()) - 120)
    assert (await h.client.get(target, headers=stale)).status_code == 401
    future = signed_headers(node, "GET", target, timestamp=int(time.time()) + 120)
    assert (await h.client.get(target, headers=future)).status_code == 401
    headers = signed_headers(node, "GET", target)
    assert (await h.client.get(target, headers=headers)).status_code == 200
    replay = await h.client.get(target, headers=headers)
    assert replay.status_code == 401
    assert "already used" in (await replay.get_json())["error_message"]
    tampered = signed_headers(node, "GET", target + "?x=1")
    assert (await h.client.get(target, headers=tampered)).status_code == 401
    unknown = f"/api/v1/nodes/{'ab' * 32}/balance"
    r = await h.client.get(unknown, headers=signed_headers(node, "GET", unknown))
    assert r.status_code == 401


def _earned(node: FakeNode, amount: str, n: int = 1) -> list[ReceiptRecord]:
    return [ReceiptRecord(f"{i:064x}", f"job_{i}", node.pubkey, "countersigned", "", MODEL, 1, 1,
                          amount, "0", amount, "USDC", "base", 0, "", 0.0) for i in range(n)]


async def test_balance_and_payouts_respect_the_chain_minimum(h: Harness) -> None:
    node = h.nodes.add()
    await completed_job(h)  # a real countersigned receipt: a tiny amount
    body = await (await node_get(h, node, f"/api/v1/nodes/{node.pubkey}/balance")).get_json()
    tiny = Decimal(body["balances"]["base"])
    assert tiny == Decimal("0.0000040375")

    target = f"/api/v1/nodes/{node.pubkey}/payouts"
    r = await node_post(h, node, target, {"chain": "base", "address": "0xabc"})
    assert r.status_code == 400 and "below the payout minimum" in (await r.get_json())[
        "error_message"]

    for record in _earned(node, "0.7", n=3):  # 2.1 USDC more, on base
        h.db.save_receipt(record)
    r = await node_post(h, node, target, {"chain": "base", "address": "0xabc"})
    assert r.status_code == 201
    payout = await r.get_json()
    assert (payout["amount"], payout["status"]) == ("2.100004", "settled")  # 6 decimals, down
    assert payout["reference"] == f"ledger:{payout['id']}"

    body = await (await node_get(h, node, f"/api/v1/nodes/{node.pubkey}/balance")).get_json()
    assert Decimal(body["balances"]["base"]) == tiny + Decimal("2.1") - Decimal("2.100004")
    assert [p["id"] for p in body["payouts"]] == [payout["id"]]

    r = await node_post(h, node, target, {"chain": "ethereum", "address": "0xabc"})
    assert r.status_code == 400
    r = await node_post(h, node, target, {"chain": "dogecoin", "address": "x"})
    assert r.status_code == 400 and "unknown chain" in (await r.get_json())["error_message"]


async def test_a_receipt_for_a_job_not_routed_here_is_stored_unwitnessed(h: Harness) -> None:
    node = h.nodes.add()
    r = await node_post(h, node, "/api/v1/receipts",
                        {"receipt": late_receipt(node, "job_served_over_the_mesh")})
    assert r.status_code == 202, await r.get_data()
    cpr = await r.get_json()
    assert (cpr["status"], cpr["job_id"]) == ("unwitnessed", "job_served_over_the_mesh")
    signed = decode_signed_receipt(base64.b64decode(cpr["receipt"]))  # not countersigned
    assert verify_receipt(signed).receipt_id == cpr["id"]
    again = await node_post(h, node, "/api/v1/receipts",
                            {"receipt": late_receipt(node, "job_served_over_the_mesh")})
    assert again.status_code == 202 and (await again.get_json())["id"] == cpr["id"]
    body = await (await node_get(h, node, f"/api/v1/nodes/{node.pubkey}/balance")).get_json()
    assert body["balances"] == {}  # a coordinator does not pay for work it cannot vouch for


async def test_a_node_stores_a_bounded_number_of_unwitnessed_receipts_a_day(
        tmp_path: Path) -> None:
    async with open_harness(tmp_path, replace(FAST, unwitnessed_per_day=2)) as h:
        node, other = h.nodes.add(), h.nodes.add()
        for n in range(2):
            r = await node_post(h, node, "/api/v1/receipts",
                                {"receipt": late_receipt(node, f"job_mesh_{n}")})
            assert r.status_code == 202, await r.get_data()
        r = await node_post(h, node, "/api/v1/receipts",
                            {"receipt": late_receipt(node, "job_mesh_2")})
        assert r.status_code == 429, await r.get_data()
        body = await r.get_json()
        assert body["error"] == "rate_limited" and "unwitnessed" in body["error_message"]
        assert 0 < int(r.headers["Retry-After"]) <= 86_400
        cpr = await h.get(f"/api/v1/cprs/{_rid(late_receipt(node, 'job_mesh_2'))}")
        assert cpr.status_code == 404  # refused, not stored: the node sends it again later
        repeat = await node_post(h, node, "/api/v1/receipts",
                                 {"receipt": late_receipt(node, "job_mesh_0")})
        assert repeat.status_code == 202  # one already stored is answered as before
        r = await node_post(h, other, "/api/v1/receipts",
                            {"receipt": late_receipt(other, "job_mesh_0")})
        assert r.status_code == 202  # the quota is each node's own


def _rid(envelope: str) -> str:
    return verify_receipt(decode_signed_receipt(base64.b64decode(envelope))).receipt_id


async def test_an_unwitnessed_receipt_must_state_the_tables_value(h: Harness) -> None:
    node = h.nodes.add()
    receipt = Receipt(job_id="job_x", node_pubkey=node.pubkey, model=MODEL, input_tokens=7,
                      output_tokens=3, completed_at=1_800_000_000, value=Decimal("5"),
                      chain="base")
    raw = base64.b64encode(encode_receipt(sign_receipt(receipt, node.key))).decode()
    r = await node_post(h, node, "/api/v1/receipts", {"receipt": raw})
    assert r.status_code == 400 and "pricing table" in (await r.get_json())["error_message"]


async def test_a_receipt_for_a_job_still_running_is_409(h: Harness) -> None:
    gate = trio.Event()
    node = h.nodes.add(Script(gate=gate, receipt=False))
    r = await h.post_json("/api/v1/jobs", {"model": MODEL, "messages": USER})
    job_id = (await r.get_json())["id"]
    await node.opened.wait()
    r = await node_post(h, node, "/api/v1/receipts", {"receipt": late_receipt(node, job_id)})
    assert r.status_code == 409 and "not ended yet" in (await r.get_json())["error_message"]
    gate.set()
    await h.finished(job_id)
    r = await node_post(h, node, "/api/v1/receipts", {"receipt": late_receipt(node, job_id)})
    assert r.status_code == 201
