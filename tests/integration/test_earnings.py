"""Earnings end to end: a real coordinator and a real node on the embedded engine.

A job through the coordinator leaves a countersigned receipt in the node's
``receipts/submitted/``; ``infernet payments``, ``infernet status`` and ``infernet payout``
show it; a job straight to the node over the mesh (``infernet chat --peer``) yields a receipt
the coordinator keeps unwitnessed and never pays.
"""

from __future__ import annotations

import json
import re
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from infernet.protocol.keys import PublicKey
from infernet.protocol.receipt import decode_countersigned_receipt, verify_countersigned_receipt
from tests.integration.conftest import BIN, MODEL, Launcher, Network, start_coordinator, wait_until

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
ADDRESS = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"


def infernet(net: Network, home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**net.launcher.env, "INFERNET_HOME": str(home), "INFERNET_COORDINATOR_URL": net.api}
    return subprocess.run([str(BIN / "infernet"), *args], env=env, capture_output=True,
                          text=True, timeout=120, check=False)


def side_file(home: Path, receipt_id: str) -> dict[str, Any] | None:
    path = home / "receipts" / "submitted" / f"{receipt_id}.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_receipts_reach_the_coordinator_and_show_in_payments_and_payout(
        launcher: Launcher) -> None:
    net = start_coordinator(launcher)
    node = net.add_node(INFERNET_COORDINATOR_URL=net.api)
    home = launcher.root / "node"
    net.wait_for_model()

    # 1. A job routed by the coordinator: its receipt comes back countersigned.
    r = httpx.post(f"{net.base_url}/chat/completions", timeout=120,
                   headers={"Authorization": f"Bearer {net.token}"},
                   json={"model": MODEL, "messages": QUESTION, "max_tokens": 16})
    assert r.status_code == 200, r.text
    routed = r.json()["infernet"]
    rid = routed["receipt_id"]
    assert rid, routed
    side = wait_until(lambda: side_file(home, rid), 60, "the receipt filed as submitted")
    assert side["status"] == "countersigned"
    coordinator_key = httpx.get(f"{net.api}/api/v1/bootstrap", timeout=5,
                                headers={"Authorization": f"Bearer {net.token}"}
                                ).json()["coordinator"]["pubkey"]
    envelope = (home / "receipts" / "submitted" / f"{rid}.cbor").read_bytes()
    verified = verify_countersigned_receipt(decode_countersigned_receipt(envelope),
                                            coordinator_keys={PublicKey.from_hex(coordinator_key)})
    assert verified.receipt.job_id == routed["job_id"]
    assert not (home / "receipts" / "pending" / f"{rid}.cbor").exists()

    # 2. payments: the coordinator's balance and the job in the last 24 h.
    out = infernet(net, home, "payments", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["coordinator"]["reachable"] is True
    assert Decimal(doc["coordinator"]["unclaimed"]) > 0
    job = next(j for j in doc["recent_jobs"] if j["receipt_id"] == rid)
    assert (job["job_id"], job["model"], job["status"]) == (routed["job_id"], MODEL,
                                                            "countersigned")
    assert Decimal(job["node_amount"]) > 0 and doc["local"]["receipts"]["countersigned"] == 1

    # 3. payout: the address is set; the balance is far below Base's 1 USDC minimum.
    assert infernet(net, home, "payout", "set", "--coin", "USDC", "--address",
                    ADDRESS).returncode == 0
    claim = infernet(net, home, "payout", "--json")
    assert claim.returncode == 1, claim.stderr  # nothing could be paid
    base = json.loads(claim.stdout)["chains"][0]
    assert (base["chain"], base["status"], base["address"]) == ("base", "below_minimum",
                                                                ADDRESS)
    assert base["minimum"] == "1"
    auto = infernet(net, home, "payout", "--auto")
    assert auto.returncode == 0, auto.stderr
    lines = auto.stdout.strip().splitlines()
    assert len(lines) == 1 and "below the 1 USDC minimum on base" in lines[0]

    # 4. A job straight to the node over the mesh: the coordinator never saw it.
    addr = wait_until(lambda: re.search(r"listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)",
                                        node.log.read_text()), 10, "node address in its log")[1]
    direct = infernet(net, launcher.root / "client", "chat", "--peer", addr, "--json",
                      "What is the capital of France?")
    assert direct.returncode == 0, direct.stderr
    direct_rid = json.loads(direct.stdout)["receipt_id"]
    side = wait_until(lambda: side_file(home, direct_rid), 60, "the direct job's receipt")
    assert side["status"] == "unwitnessed"

    def earnings() -> dict[str, Any] | None:
        status = infernet(net, home, "status", "--json")
        found: dict[str, Any] = json.loads(status.stdout)["earnings"]
        return found if found["unclaimed"] is not None else None

    shown = wait_until(earnings, 30, "the status to show the coordinator's balance")
    assert shown["receipts"]["countersigned"] == 1 and shown["receipts"]["unwitnessed"] == 1
    assert shown["receipts"]["pending"] == 0
    assert Decimal(shown["unclaimed"]) == Decimal(doc["coordinator"]["unclaimed"])
    text = infernet(net, home, "status")
    assert "USDC unclaimed" in text.stdout and "1 unwitnessed" in text.stdout
