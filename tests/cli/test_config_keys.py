"""``infernet config`` and ``infernet keys`` as a user runs them."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from infernet.node.config import init_home
from infernet.protocol.keys import SecretKey, decode_npub, encode_npub
from infernet.protocol.receipt import Receipt, countersign_receipt, encode_receipt, sign_receipt
from tests.cli.conftest import Cli


def test_config_get_set_unset(cli: Cli) -> None:
    init_home(cli.home)
    path = cli.home / "config.json"
    assert cli("config", "get", "port").stdout.strip() == "46337"
    out = cli("config", "set", "port", "4100", "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"key": "port", "value": 4100, "file": str(path)}
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["port"] == 4100
    peer = "/ip4/10.0.0.1/tcp/46337/p2p/16Uiu2HAmBawpeawSjdxzi2b8NcCjszr9Szp4ESTK5aqARLaaUF5s"
    assert cli("config", "set", "bootstrap", peer).returncode == 0
    assert cli("config", "set", "advertise", "false").returncode == 0
    assert cli("config", "set", "coordinator_url", "http://127.0.0.1:8080").returncode == 0
    doc = json.loads(cli("config", "get", "--json").stdout)
    assert (doc["bootstrap"], doc["advertise"], doc["coordinator_url"]) == (
        [peer], False, "http://127.0.0.1:8080")
    assert cli("config", "unset", "port").returncode == 0
    assert json.loads(cli("config", "get", "port", "--json").stdout)["value"] == 46337


def test_config_get_shows_environment_overrides_and_set_warns(cli: Cli) -> None:
    init_home(cli.home)
    cli.env["INFERNET_PORT"] = "5555"
    assert cli("config", "get", "port").stdout.strip() == "5555"
    out = cli("config", "set", "port", "6000")
    assert out.returncode == 0
    assert "INFERNET_PORT is set in this environment" in out.stderr
    assert json.loads((cli.home / "config.json").read_text())["port"] == 6000


def test_keys_list_and_export(cli: Cli) -> None:
    key, _ = init_home(cli.home)
    listing = json.loads(cli("keys", "list", "--json").stdout)["node"]
    assert listing["hex"] == key.public_key.hex()
    assert decode_npub(listing["npub"]) == key.public_key
    assert listing["mode"] == "0600" and listing["peer_id"].startswith("16Uiu2")
    assert cli("keys", "export", "node", "--format", "hex").stdout.strip() == listing["hex"]
    assert cli("keys", "export", "node").stdout.strip() == listing["npub"]
    human = cli("keys", "list").stdout
    assert listing["npub"] in human and key.hex() not in human  # never the secret


def test_keys_verify_a_receipt_file(cli: Cli, tmp_path: Path) -> None:
    node = SecretKey.generate().even_y()
    coordinator = SecretKey.generate().even_y()
    signed = sign_receipt(Receipt(
        job_id="job-1", node_pubkey=node.public_key.hex(), model="gemma3-270m",
        input_tokens=12, output_tokens=34, completed_at=1_790_000_000,
        value=Decimal("0.0001"), chain="base"), node)
    node_only = tmp_path / "signed.cpr"
    node_only.write_bytes(encode_receipt(signed))
    full = tmp_path / "countersigned.cpr"
    full.write_bytes(encode_receipt(countersign_receipt(signed, coordinator)))

    out = cli("keys", "verify", str(node_only))
    assert out.returncode == 0 and "[OK] node signature" in out.stdout
    assert "not countersigned yet" in out.stdout
    doc = json.loads(cli("keys", "verify", str(full), "--coordinator-key",
                         encode_npub(coordinator.public_key), "--json").stdout)
    assert doc["node"] == node.public_key.hex() and doc["output_tokens"] == 34
    assert doc["coordinator"] == coordinator.public_key.hex() and doc["coordinator_trusted"]

    stranger = SecretKey.generate().even_y().public_key.hex()
    untrusted = cli("keys", "verify", str(full), "--coordinator-key", stranger)
    assert untrusted.returncode == 1 and "untrusted key" in untrusted.stderr
    tampered = tmp_path / "tampered.cpr"
    sig = signed.node_sig
    forged = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    tampered.write_bytes(full.read_bytes().replace(sig.encode(), forged.encode()))
    bad_sig = cli("keys", "verify", str(tampered))
    assert bad_sig.returncode == 1 and "signature" in bad_sig.stderr
    junk = tmp_path / "junk.cpr"
    junk.write_bytes(b"\x00not a receipt")
    not_receipt = cli("keys", "verify", str(junk))
    assert not_receipt.returncode == 2 and "not a receipt file" in not_receipt.stderr
