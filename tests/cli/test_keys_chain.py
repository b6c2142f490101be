"""``infernet init`` / ``keys`` / ``register`` / ``command`` as a user runs them: the key chain."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from infernet.protocol.delegation import NodeDelegation, decode_signed
from infernet.protocol.keys import SecretKey, decode_npub, decode_nsec
from infernet.protocol.receipt import Receipt, encode_receipt, sign_receipt
from tests.cli.conftest import Cli, snapshot

NODE_PEER = "/ip4/127.0.0.1/tcp/9/p2p/16Uiu2HAmBawpeawSjdxzi2b8NcCjszr9Szp4ESTK5aqARLaaUF5s"


def ok(cli: Cli, *args: str) -> str:
    out = cli(*args)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return out.stdout


def test_init_creates_user_key_and_delegation_once(cli: Cli) -> None:
    first = ok(cli, "init")
    assert "Created user key" in first and "move it off this machine" in first
    assert "infernet keys export user --format nsec" in first
    keys = cli.home / "keys"
    for name in ("node.key", "user.key", "delegation.cbor"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600, name
    user_hex = (keys / "user.key").read_text().strip()
    before = snapshot(cli.home)
    second = ok(cli, "init")
    assert "Created user key" not in second and "Kept existing node key" in second
    assert snapshot(cli.home) == before  # idempotent: nothing rewritten
    delegation = decode_signed((keys / "delegation.cbor").read_bytes(), NodeDelegation).record
    assert delegation.user_pubkey == SecretKey.from_hex(user_hex).public_key.hex()
    assert delegation.scope == ("serve", "receipts", "model_keys", "commands")
    assert delegation.expires_at - delegation.issued_at == 365 * 86400


def test_init_json_reports_the_identity_it_made_then_kept(cli: Cli) -> None:
    first = json.loads(ok(cli, "init", "--json"))
    assert first["node_key_created"] and first["user_key_created"] and first["delegation_issued"]
    assert first["node_id"].startswith("npub1") and len(first["user_pubkey"]) == 64
    user = (cli.home / "keys" / "user.key").read_text().strip()
    assert SecretKey.from_hex(user).public_key.hex() == first["user_pubkey"]
    again = json.loads(ok(cli, "init", "--json"))
    assert not (again["node_key_created"] or again["user_key_created"]
                or again["delegation_issued"])
    assert again["node_pubkey"] == first["node_pubkey"]


def test_a_user_key_moved_offline_is_never_replaced(cli: Cli, tmp_path: Path) -> None:
    ok(cli, "init")
    offline = tmp_path / "offline-user.key"
    (cli.home / "keys" / "user.key").rename(offline)
    out = ok(cli, "init")
    assert "Created user key" not in out and not (cli.home / "keys" / "user.key").exists()
    listing = json.loads(ok(cli, "keys", "list", "--json"))
    assert listing["user"]["file"] is None  # known from the delegation, secret elsewhere
    assert "not on this machine" in ok(cli, "keys", "list")
    user_pub = ok(cli, "keys", "export", "user", "--format", "hex").strip()
    assert user_pub == SecretKey.from_hex(offline.read_text().strip()).public_key.hex()
    # init --force: a new node key, delegated again from the user key given on the side.
    cli.env["INFERNET_USER_KEY"] = str(offline)
    forced = ok(cli, "init", "--force")
    assert "Delegated this node" in forced
    doc = json.loads(ok(cli, "keys", "list", "--json"))
    assert doc["node"]["delegation"]["valid"] and doc["user"]["hex"] == user_pub


def test_keys_list_shows_the_chain_and_export_each_key(cli: Cli) -> None:
    ok(cli, "init")
    doc = json.loads(ok(cli, "keys", "list", "--json"))
    user, node, models = doc["user"], doc["node"], doc["models"]
    assert decode_npub(user["npub"]).hex() == user["hex"]
    assert node["delegation"]["valid"] and node["peer_id"].startswith("16Uiu2")
    assert [m["model"] for m in models] == ["gemma3-270m"]  # the built-in model's key
    assert models[0]["delegated_by"] == node["hex"]
    assert (cli.home / "keys" / "models" / "gemma3-270m.key").stat().st_mode & 0o777 == 0o600
    assert ok(cli, "keys", "export", "user").strip() == user["npub"]
    assert ok(cli, "keys", "export", "node", "--format", "hex").strip() == node["hex"]
    assert ok(cli, "keys", "export", "model", "gemma3-270m").strip() == models[0]["npub"]
    human = ok(cli, "keys", "list")
    secret = (cli.home / "keys" / "user.key").read_text().strip()
    assert user["npub"] in human and node["npub"] in human and models[0]["npub"] in human
    assert secret not in human
    backup = cli("keys", "export", "user", "--format", "nsec")
    assert backup.returncode == 0 and "SECRET user key" in backup.stderr
    assert decode_nsec(backup.stdout.strip()).hex() == secret
    assert secret not in backup.stderr


def test_rotate_keeps_the_chain_and_retires_the_old_key(cli: Cli) -> None:
    ok(cli, "init")
    before = json.loads(ok(cli, "keys", "list", "--json"))
    config_before = (cli.home / "config.json").read_bytes()
    out = ok(cli, "keys", "rotate")
    assert "redeemable for 24 h" in out
    after = json.loads(ok(cli, "keys", "list", "--json"))
    assert after["node"]["hex"] != before["node"]["hex"]
    assert after["node"]["delegation"]["valid"] and after["node"]["delegation"]["rotations"] == 1
    assert after["user"]["hex"] == before["user"]["hex"]
    assert [r["hex"] for r in after["retired"]] == [before["node"]["hex"]]
    retired = cli.home / "keys" / "retired" / f"{before['node']['hex']}.key"
    assert retired.stat().st_mode & 0o777 == 0o600
    assert after["models"][0]["delegated_by"] == after["node"]["hex"]  # re-issued
    assert after["models"][0]["hex"] == before["models"][0]["hex"]  # same model key
    assert (cli.home / "config.json").read_bytes() == config_before


def test_verify_finds_a_receipt_by_id_in_the_store(cli: Cli) -> None:
    ok(cli, "init")
    node = SecretKey.generate().even_y()
    signed = sign_receipt(Receipt(
        job_id="job-1", node_pubkey=node.public_key.hex(), model="gemma3-270m",
        input_tokens=3, output_tokens=5, completed_at=1_790_000_000, value=Decimal("0.0001"),
        chain="base"), node)
    missing = cli("keys", "verify", "abc123")
    assert missing.returncode == 1 and "neither a receipt file nor the id" in missing.stderr
    pending = cli.home / "receipts" / "pending"
    pending.mkdir(parents=True)
    (pending / "abc123.cbor").write_bytes(encode_receipt(signed))
    found = json.loads(ok(cli, "keys", "verify", "abc123", "--json"))
    assert found["job_id"] == "job-1" and found["file"].endswith("pending/abc123.cbor")
    traversal = cli("keys", "verify", "../config")
    assert traversal.returncode == 1


@pytest.mark.parametrize(("args", "needle"), [
    (["keys", "export", "model"], "give a model name"),
    (["keys", "export", "node", "extra"], "give a model name"),
    (["keys", "export", "model", "m", "--format", "nsec"], "not exported as secrets"),
    (["command", "install", "m", "--node", "npub1nope", "--peer", NODE_PEER], "--node"),
    (["command", "install", "m", "--node", "ab" * 32, "--peer", "not-a-multiaddr"],
     "bad peer multiaddr"),
    (["command", "install", "m", "--node", "ab" * 32, "--peer", NODE_PEER], "another node"),
    (["command", "install", "m", "--node", "ab" * 32], "--coordinator URL"),
    (["register"], "no coordinator configured"),
    (["init", "--user-key", "/nonexistent/user.key"], "user key /nonexistent/user.key is missing"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(cli: Cli, args: list[str],
                                                       needle: str) -> None:
    if args[0] != "init":
        ok(cli, "init")
    before = snapshot(cli.home)
    out = cli(*args)
    assert out.returncode == 2, (out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], lines
    assert snapshot(cli.home) == before


def test_command_without_a_user_key_says_where_to_find_one(cli: Cli) -> None:
    ok(cli, "init")
    (cli.home / "keys" / "user.key").unlink()
    out = cli("command", "install", "m", "--node", "ab" * 32, "--coordinator",
              "http://127.0.0.1:9")
    assert out.returncode == 2 and "--user-key FILE" in out.stderr


def test_command_and_register_report_an_unreachable_coordinator(cli: Cli) -> None:
    ok(cli, "init")
    node = json.loads(ok(cli, "keys", "list", "--json"))["node"]["npub"]
    out = cli("command", "remove", "m", "--node", node, "--coordinator", "http://127.0.0.1:9")
    assert out.returncode == 1 and "unreachable" in out.stderr
    out = cli("register", "--coordinator", "http://127.0.0.1:9")
    assert out.returncode == 1 and "unreachable" in out.stderr
