"""``infernet payout set|list``, ``payout`` and ``payments`` driven as a user would."""

from __future__ import annotations

import json
import time

import pytest

from infernet.node.config import init_home, load_config
from infernet.node.receipt_store import ReceiptStore
from infernet.protocol.pricing import job_value, rates_for_model
from infernet.protocol.receipt import Receipt, encode_receipt, receipt_id, sign_receipt
from tests.cli.conftest import Cli
from tests.cli.test_bad_input import assert_refused

EVM = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"
SOL = "7EcDhSYGxXyscszYEp35KHN8vvw3svAuLKTzXwCFLtV"
BTC = "bc1p5d7rjq7g6rdk2yhzks9smlaqtedr4dekq08ge8ztwac72sfr9rusxg3297"


@pytest.mark.parametrize(("args", "needles"), [
    (["payout", "set", "--coin", "FOO", "--address", EVM], ["unknown coin 'FOO'", "USDC"]),
    (["payout", "set", "--coin", "USDC", "--address", EVM, "--network", "bitcoin"],
     ["USDC is not paid on 'bitcoin'", "base"]),
    (["payout", "set", "--coin", "USDC", "--address", "0xabc"], ["not an address on base"]),
    (["payout", "set", "--coin", "ETH", "--address", EVM[:-1] + "D"], ["EIP-55 checksum"]),
    (["payout", "set", "--coin", "SOL", "--address", EVM], ["not a Solana address"]),
    (["payout", "set", "--coin", "BTC", "--address", BTC[:-1] + "8"], ["bc1", "checksum"]),
    (["payout", "set", "--coin", "USDC"], ["both a coin and an address"]),
    (["payout", "--chain", "dogecoin"], ["unknown chain 'dogecoin'"]),
    (["payout", "--set-address", "0xnothex"], ["not an address on base"]),
])
def test_bad_coins_and_addresses_are_refused(cli: Cli, args: list[str],
                                             needles: list[str]) -> None:
    init_home(cli.home)
    assert_refused(cli, args, *needles)


def test_addresses_are_set_listed_and_replaced(cli: Cli) -> None:
    init_home(cli.home)
    out = cli("payout", "set", "--coin", "usdc", "--address", EVM, "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["network"] == "base"  # USDC's default network
    assert cli("payout", "set", "BTC", BTC).returncode == 0  # the FAQ's positional form
    assert cli("payout", "set", "--coin", "USDC", "--network", "solana", "--address",
               SOL).returncode == 0
    other = "0x" + "ab" * 20
    assert cli("payout", "--set-address", other, "--chain", "base").returncode == 0
    listed = json.loads(cli("payout", "list", "--json").stdout)["payout_addresses"]
    assert [(a["coin"], a["network"], a["address"], a["pays"]) for a in listed] == [
        ("BTC", "bitcoin", BTC, False), ("USDC", "solana", SOL, True),
        ("USDC", "base", other, True)]  # the base address was replaced, not added
    assert load_config(cli.home).payout_addresses[-1].address == other
    assert (cli.home / "config.json").stat().st_mode & 0o777 == 0o600


def test_a_hand_edited_bad_address_is_a_config_error(cli: Cli) -> None:
    init_home(cli.home)
    path = cli.home / "config.json"
    path.write_text(json.dumps({"payout_addresses": [
        {"coin": "USDC", "network": "base", "address": "0x123"}]}))
    assert_refused(cli, ["payout", "list"], str(path), "payout_addresses", "0x123")


def test_payout_without_a_coordinator_says_so(cli: Cli) -> None:
    init_home(cli.home)
    for args in (["payout"], ["payout", "--auto"]):
        out = cli(*args)
        assert out.returncode == 1, out
        assert out.stderr.startswith("error: no coordinator configured")
        assert "coordinator_url" in out.stderr and out.stdout == ""


def test_payments_shows_local_receipts_when_no_coordinator_answers(cli: Cli) -> None:
    key, _ = init_home(cli.home)
    store = ReceiptStore(cli.home)
    now = int(time.time())
    envelopes = []
    for n, tokens in enumerate((12, 40, 7)):
        receipt = Receipt(job_id=f"job_{n}", node_pubkey=key.public_key.hex(),
                          model="gemma3-270m", input_tokens=5, output_tokens=tokens,
                          completed_at=now - 60 * n,
                          value=job_value(5, tokens, rates_for_model("gemma3-270m")),
                          chain="base")
        envelopes.append(encode_receipt(sign_receipt(receipt, key)))
    store.write_pending(envelopes)
    rid = receipt_id(sign_receipt(Receipt(
        job_id="job_2", node_pubkey=key.public_key.hex(), model="gemma3-270m",
        input_tokens=5, output_tokens=7, completed_at=now - 120,
        value=job_value(5, 7, rates_for_model("gemma3-270m")), chain="base"), key).body)
    store.mark_submitted(rid, envelopes[2], "unwitnessed", {})

    out = cli("payments", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["coordinator"] == {"reachable": False, "error": doc["coordinator"]["error"]}
    assert "no coordinator configured" in doc["coordinator"]["error"]
    assert [j["job_id"] for j in doc["recent_jobs"]] == ["job_0", "job_1", "job_2"]
    assert [j["status"] for j in doc["recent_jobs"]] == ["pending", "pending", "unwitnessed"]
    assert doc["recent_jobs"][0]["tokens"] == 17
    assert doc["local"]["receipts"] == {"pending": 2, "countersigned": 0, "unwitnessed": 1,
                                        "rejected": 0}
    text = cli("payments")
    assert "unreachable" in text.stdout and "job_1" in text.stdout
