"""Receipts from nodes: checked against the job, countersigned, stored, served, verifiable
offline with nothing but the two public keys."""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path

from infernet.protocol.keys import PublicKey
from infernet.protocol.receipt import decode_countersigned_receipt, verify_countersigned_receipt
from tests.coordinator.fakes import MODEL, Script
from tests.coordinator.harness import COORDINATOR_KEY, Harness

USER = [{"role": "user", "content": "What is the capital of France?"}]


async def run_job(h: Harness) -> dict[str, object]:
    r = await h.post_json("/api/v1/jobs", {"model": MODEL, "messages": USER})
    job_id = (await r.get_json())["id"]
    await h.finished(job_id)
    body: dict[str, object] = await (await h.get(f"/api/v1/jobs/{job_id}")).get_json()
    return body


async def test_a_receipt_is_countersigned_and_verifies_offline(h: Harness) -> None:
    node = h.nodes.add(weights_hash="sha256:w")
    job = await run_job(h)
    provenance = job["infernet"]
    assert isinstance(provenance, dict)
    rid = provenance["receipt_id"]
    assert isinstance(rid, str) and len(rid) == 64

    r = await h.get(f"/api/v1/cprs/{rid}")
    assert r.status_code == 200
    cpr = await r.get_json()
    assert (cpr["id"], cpr["job_id"], cpr["status"], cpr["node_pubkey"]) == (
        rid, job["id"], "countersigned", node.pubkey)
    assert cpr["coordinator_pubkey"] == COORDINATOR_KEY.public_key.hex()
    assert (cpr["input_tokens"], cpr["output_tokens"], cpr["currency"], cpr["chain"]) == (
        7, 3, "USDC", "base")
    # 7 in × 0.00025/1K + 3 out × 0.001/1K; the node keeps 85 %, the platform 15 %
    assert (cpr["value"], cpr["node_amount"], cpr["platform_fee"]) == (
        "0.00000475", "0.0000040375", "0.0000007125")

    envelope = decode_countersigned_receipt(base64.b64decode(cpr["receipt"]))
    verified = verify_countersigned_receipt(
        envelope, coordinator_keys=[PublicKey.from_hex(cpr["coordinator_pubkey"])])
    assert verified.receipt_id == rid
    assert verified.receipt.job_id == job["id"]
    assert verified.receipt.weights_hash == "sha256:w"

    bootstrap = await (await h.client.get("/api/v1/bootstrap")).get_json()
    assert bootstrap["coordinator"]["pubkey"] == cpr["coordinator_pubkey"]


async def test_only_the_submitter_sees_a_receipt(h: Harness) -> None:
    h.nodes.add()
    job = await run_job(h)
    provenance = job["infernet"]
    assert isinstance(provenance, dict)
    other, _ = h.db.create_token("other")
    assert (await h.get(f"/api/v1/cprs/{provenance['receipt_id']}", token=other)
            ).status_code == 404
    assert (await h.get("/api/v1/cprs/" + "0" * 64)).status_code == 404


async def test_a_receipt_that_overstates_the_work_is_rejected(h: Harness, tmp_path: Path) -> None:
    h.nodes.add(Script(receipt_extra_tokens=100))
    job = await run_job(h)
    assert job["status"] == "completed"  # the client got its answer regardless
    provenance = job["infernet"]
    assert isinstance(provenance, dict) and provenance["receipt_id"] is None
    db = sqlite3.connect(tmp_path / "coordinator.db")
    try:
        [(status, reason)] = db.execute("SELECT status, reason FROM receipts WHERE job_id = ?",
                                        (job["id"],)).fetchall()
    finally:
        db.close()
    assert status == "rejected" and "output_tokens" in reason


async def test_no_receipt_no_receipt_id(h: Harness) -> None:
    h.nodes.add(Script(receipt=False))
    job = await run_job(h)
    provenance = job["infernet"]
    assert isinstance(provenance, dict) and provenance["receipt_id"] is None


async def test_openai_responses_name_the_receipt(h: Harness) -> None:
    h.nodes.add()
    r = await h.post_json("/v1/chat/completions", {"model": MODEL, "messages": USER})
    body = await r.get_json()
    rid = body["infernet"]["receipt_id"]
    assert rid and (await h.get(f"/api/v1/cprs/{rid}")).status_code == 200
    r = await h.post_json("/v1/chat/completions", {"model": MODEL, "messages": USER,
                                                   "stream": True})
    raw = (await r.get_data()).decode()
    assert raw.count('"receipt_id":"') == 1  # in the finish_reason chunk, once it is known
