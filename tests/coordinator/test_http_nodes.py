"""Node-facing routes (X-Infernet-Auth): late receipts, balance, payouts, auth failures, and
receipts signed by a key the node rotated away (handed in under its current key)."""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio

from coordinator import registry
from coordinator.receipts import ReceiptRecord
from infernet.protocol.auth import PUBKEY_HEADER, sign_request
from infernet.protocol.delegation import ROTATION_GRACE_S, KeyRotation, sign_record
from infernet.protocol.keys import SecretKey
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
from tests.coordinator.test_http_registry import b64, delegation

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


def late_receipt(node: FakeNode, job_id: str, output_tokens: int = 3, *,
                 completed_at: int = 1_800_000_000) -> str:
    text = "".join(node.script.texts)
    receipt = Receipt(
        job_id=job_id, node_pubkey=node.pubkey, model=MODEL, input_tokens=7,
        output_tokens=output_tokens, completed_at=completed_at,
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


# -- receipts signed by a key the node rotated away ------------------------------------------

HOUR = 3600


async def rotate(h: Harness, old: FakeNode, *, rotated_at: int,
                 new: FakeNode | None = None, user: SecretKey | None = None) -> FakeNode:
    """``old`` registers (delegated by ``user``, default a new one), rotates to a new key at
    ``rotated_at``, registers that key (as `infernet keys rotate` does) and announces with it
    (or ``new``, announced already); return the node under its new key."""
    user = user or SecretKey.generate().even_y()
    signed = delegation(user, old.pubkey, issued_at=rotated_at - 2 * 86_400,
                        lifetime=365 * 86_400)
    r = await node_post(h, old, "/api/v1/nodes/register", {"delegation": b64(signed)})
    assert r.status_code in (200, 201), await r.get_data()
    new = new or h.nodes.add(Script(receipt=False))
    rotation = sign_record(KeyRotation(old_pubkey=old.pubkey, new_pubkey=new.pubkey,
                                       rotated_at=rotated_at), old.key)
    r = await node_post(h, new, "/api/v1/nodes/register",
                        {"delegation": b64(signed), "rotations": [b64(rotation)]})
    assert r.status_code == 201, await r.get_data()
    return new


async def upload_as(h: Harness, uploader: FakeNode, receipt: str) -> Any:
    """POST a receipt signed by the uploader's key, naming it in X-Infernet-Pubkey."""
    raw = json.dumps({"receipt": receipt}).encode()
    headers = {**signed_headers(uploader, "POST", "/api/v1/receipts", raw),
               PUBKEY_HEADER: uploader.pubkey}
    return await h.client.post("/api/v1/receipts", data=raw, headers=headers)


async def test_an_old_keys_receipt_is_countersigned_within_the_grace(h: Harness) -> None:
    old = h.nodes.add(Script(receipt=False))
    job_id = await completed_job(h)  # served under the old key
    now = int(time.time())
    new = await rotate(h, old, rotated_at=now - HOUR)
    receipt = late_receipt(old, job_id, completed_at=now - 2 * HOUR)

    alone = await node_post(h, new, "/api/v1/receipts", {"receipt": receipt})
    assert alone.status_code == 401  # without naming itself the new key is not the signer
    r = await upload_as(h, new, receipt)
    assert r.status_code == 201, await r.get_data()
    cpr = await r.get_json()
    assert (cpr["status"], cpr["job_id"], cpr["node_pubkey"]) == (
        "countersigned", job_id, old.pubkey)
    job = await (await h.get(f"/api/v1/jobs/{job_id}")).get_json()
    assert job["infernet"]["receipt_id"] == cpr["id"]
    again = await upload_as(h, new, receipt)
    assert again.status_code == 200 and (await again.get_json())["id"] == cpr["id"]
    direct = await upload_as(h, new, late_receipt(old, "job_mesh_before",
                                                  completed_at=now - 2 * HOUR))
    assert direct.status_code == 202  # a job not routed here: stored unwitnessed, as before


async def test_an_old_keys_receipt_after_the_grace_is_refused_for_good(h: Harness) -> None:
    old = h.nodes.add(Script(receipt=False))
    job_id = await completed_job(h)
    now = int(time.time())
    rotated_at = now - ROTATION_GRACE_S - HOUR
    new = await rotate(h, old, rotated_at=rotated_at)
    r = await upload_as(h, new, late_receipt(old, job_id, completed_at=rotated_at - HOUR))
    assert r.status_code == 400, await r.get_data()
    body = await r.get_json()
    assert body["error"] == "bad_request"
    assert "24 h grace period is over" in body["error_message"]
    assert f"key {old.pubkey} was rotated away at " in body["error_message"]
    job = await (await h.get(f"/api/v1/jobs/{job_id}")).get_json()
    assert job["infernet"]["receipt_id"] is None  # nothing countersigned, nothing paid


async def test_an_old_keys_receipt_for_a_job_after_the_rotation_is_refused(h: Harness) -> None:
    old = h.nodes.add(Script(receipt=False))
    now = int(time.time())
    new = await rotate(h, old, rotated_at=now - HOUR)
    r = await upload_as(h, new, late_receipt(old, "job_mesh_after", completed_at=now - 60))
    assert r.status_code == 400
    assert "after it was rotated away" in (await r.get_json())["error_message"]


async def test_a_rotated_node_claims_what_its_retired_key_earned(h: Harness) -> None:
    old = h.nodes.add(Script(receipt=False))
    for record in _earned(old, "0.6", n=3):  # 1.8 USDC earned under the old key
        h.db.save_receipt(record)
    new = await rotate(h, old, rotated_at=int(time.time()) - HOUR)
    h.db.save_receipt(replace(_earned(new, "0.5")[0], id="ff" * 32, job_id="job_new"))
    balance = f"/api/v1/nodes/{new.pubkey}/balance"
    body = await (await node_get(h, new, balance)).get_json()
    assert body["keys"] == [old.pubkey, new.pubkey]
    assert Decimal(body["balances"]["base"]) == Decimal("2.3")

    r = await node_post(h, new, f"/api/v1/nodes/{new.pubkey}/payouts",
                        {"chain": "base", "address": "0xabc"})
    assert r.status_code == 201, await r.get_data()
    assert (await r.get_json())["amount"] == "2.3"
    body = await (await node_get(h, new, balance)).get_json()
    assert Decimal(body["balances"]["base"]) == 0 and len(body["payouts"]) == 1
    _, paid = h.db.ledger_entries([old.pubkey])
    assert sorted(paid) == [(old.pubkey, "base", "1.8")]  # drawn on the key that earned it


async def test_a_node_that_renews_its_delegation_keeps_its_retired_keys(h: Harness) -> None:
    # A -> B registered; then B's owner renews the delegation (`infernet init --force`): the
    # fresh chain starts at B and names no rotation. A's earnings and its receipts within
    # the grace still belong to B.
    old = h.nodes.add(Script(receipt=False))
    job_id = await completed_job(h)  # served under the old key
    h.db.save_receipt(_earned(old, "1.5")[0])
    now, user = int(time.time()), SecretKey.generate().even_y()
    new = await rotate(h, old, rotated_at=now - HOUR, user=user)
    fresh = delegation(user, new.pubkey, issued_at=now - 60, lifetime=365 * 86_400)
    r = await node_post(h, new, "/api/v1/nodes/register", {"delegation": b64(fresh)})
    assert r.status_code == 200 and (await r.get_json())["rotations"] == 0
    assert registry.predecessors(h.db, new.pubkey) == [(old.pubkey, now - HOUR)]

    body = await (await node_get(h, new, f"/api/v1/nodes/{new.pubkey}/balance")).get_json()
    assert body["keys"] == [old.pubkey, new.pubkey]
    assert Decimal(body["balances"]["base"]) == Decimal("1.5")
    r = await upload_as(h, new, late_receipt(old, job_id, completed_at=now - 2 * HOUR))
    assert r.status_code == 201, await r.get_data()
    assert (await r.get_json())["status"] == "countersigned"
    # The grace rule still holds for such a key.
    r = await upload_as(h, new, late_receipt(old, "job_mesh_after", completed_at=now - 60))
    assert r.status_code == 400
    message = (await r.get_json())["error_message"]
    assert "after it was rotated away" in message and old.pubkey in message
    # A key no chain links to this node is still refused.
    stranger = h.nodes.add(Script(receipt=False))
    r = await upload_as(h, new, late_receipt(stranger, "job_x", completed_at=now - 60))
    assert r.status_code == 400
    assert "not a key of this node" in (await r.get_json())["error_message"]


async def test_a_retired_key_signs_nothing_and_cannot_fork_its_chain(h: Harness) -> None:
    old = h.nodes.add(Script(receipt=False))
    for record in _earned(old, "1.5"):
        h.db.save_receipt(record)
    now, user = int(time.time()), SecretKey.generate().even_y()
    new = await rotate(h, old, rotated_at=now - HOUR, user=user)
    # The old key is still announced (its entry lasts until it expires), yet signs nothing.
    r = await node_get(h, old, f"/api/v1/nodes/{old.pubkey}/balance")
    assert r.status_code == 401
    assert f"rotated away to {new.pubkey}" in (await r.get_json())["error_message"]
    r = await node_post(h, old, f"/api/v1/nodes/{old.pubkey}/payouts",
                        {"chain": "base", "address": "0xthief"})
    assert r.status_code == 401
    # Whoever else holds the old key cannot hand its earnings to a chain of their own, nor
    # register it again on its own.
    fork = h.nodes.add(Script(receipt=False))
    signed = delegation(user, old.pubkey, issued_at=now - 2 * 86_400, lifetime=365 * 86_400)
    r = await node_post(h, old, "/api/v1/nodes/register", {"delegation": b64(signed)})
    assert r.status_code == 401 and "rotated away" in (await r.get_json())["error_message"]
    rotation = sign_record(KeyRotation(old_pubkey=old.pubkey, new_pubkey=fork.pubkey,
                                       rotated_at=now - 60), old.key)
    r = await node_post(h, fork, "/api/v1/nodes/register",
                        {"delegation": b64(signed), "rotations": [b64(rotation)]})
    assert r.status_code == 400
    assert f"key {old.pubkey} was already rotated away to {new.pubkey}" in (
        await r.get_json())["error_message"]
    r = await node_post(h, new, f"/api/v1/nodes/{new.pubkey}/payouts",
                        {"chain": "base", "address": "0xabc"})
    assert r.status_code == 201 and (await r.get_json())["amount"] == "1.5"


async def test_payout_parts_keep_a_key_named_by_two_chains_from_paying_twice(
        h: Harness) -> None:
    # Two registrations naming one retired key (stored before forks were refused): the
    # ledger still pays that key's earnings once, to whichever chain claims first.
    old, first, second = (h.nodes.add(Script(receipt=False)) for _ in range(3))
    h.db.save_receipt(_earned(old, "1.5")[0])
    for node in (first, second):
        registry.save_registration(h.db, registry.Registration(
            node.pubkey, "00" * 32, "", json.dumps([b64(sign_record(KeyRotation(
                old_pubkey=old.pubkey, new_pubkey=node.pubkey, rotated_at=1), old.key))]),
            0.0))
    r = await node_post(h, second, f"/api/v1/nodes/{second.pubkey}/payouts",
                        {"chain": "base", "address": "0xsecond"})
    assert r.status_code == 201 and (await r.get_json())["amount"] == "1.5"
    body = await (await node_get(h, first, f"/api/v1/nodes/{first.pubkey}/balance")).get_json()
    assert body["keys"] == [old.pubkey, first.pubkey] and body["balances"] == {"base": "0"}


async def test_keys_outside_a_registered_chain_are_refused(h: Harness) -> None:
    old = h.nodes.add(Script(receipt=False))
    now = int(time.time())
    new = await rotate(h, old, rotated_at=now - HOUR)
    receipt = late_receipt(old, "job_mesh", completed_at=now - 2 * HOUR)
    stranger = FakeNode(SecretKey.generate().even_y(), "peer-stranger", Script())
    # An unknown key, as before: 401 whether it names itself or not.
    strangers = late_receipt(stranger, "job_mesh", completed_at=now - 2 * HOUR)
    assert (await node_post(h, stranger, "/api/v1/receipts",
                            {"receipt": strangers})).status_code == 401
    assert (await upload_as(h, stranger, receipt)).status_code == 401
    # Naming the new key but signing with another: 401.
    raw = json.dumps({"receipt": receipt}).encode()
    forged = {**signed_headers(stranger, "POST", "/api/v1/receipts", raw),
              PUBKEY_HEADER: new.pubkey}
    assert (await h.client.post("/api/v1/receipts", data=raw, headers=forged)).status_code == 401
    # An announced node that is not registered: its chain is unknown here (it may register).
    unregistered = h.nodes.add()
    r = await upload_as(h, unregistered, receipt)
    assert r.status_code == 401 and "not registered" in (await r.get_json())["error_message"]
    # A registered node handing in a receipt no key of its chain signed: refused for good.
    r = await upload_as(h, new, strangers)
    assert r.status_code == 400
    assert "not a key of this node" in (await r.get_json())["error_message"]


async def test_the_announced_key_path_reads_no_registration(
        h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    node = h.nodes.add(Script(receipt=False))
    job_id = await completed_job(h)

    def no_read(*_: Any) -> None:
        raise AssertionError("the announced-key path read the registry")

    monkeypatch.setattr(registry, "get_registration", no_read)
    r = await node_post(h, node, "/api/v1/receipts", {"receipt": late_receipt(node, job_id)})
    assert r.status_code == 201, await r.get_data()
    named = await upload_as(h, node, late_receipt(node, job_id))  # naming itself: the same
    assert named.status_code == 200
