"""Node registry and owner-command queue: what a node, a user and a stranger each get."""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any

import pytest

from coordinator import registry
from infernet.protocol.auth import sign_request
from infernet.protocol.delegation import (
    KeyRotation,
    NodeDelegation,
    OwnerCommand,
    Signed,
    encode_signed,
    sign_record,
)
from infernet.protocol.keys import SecretKey, encode_npub
from tests.coordinator.fakes import MODEL, FakeNode
from tests.coordinator.harness import Harness

SCOPE = ("serve", "receipts", "model_keys", "commands")


def b64(signed: Signed[Any]) -> str:
    return base64.b64encode(encode_signed(signed)).decode()


def delegation(user: SecretKey, node_pub: str, *, issued_at: int | None = None,
               lifetime: int = 86400) -> Signed[NodeDelegation]:
    now = int(time.time()) if issued_at is None else issued_at
    return sign_record(NodeDelegation(user_pubkey=user.public_key.hex(), node_pubkey=node_pub,
                                      scope=SCOPE, issued_at=now - 10,
                                      expires_at=now + lifetime), user)


def command(user: SecretKey, node_pub: str, *, action: str = "model_install",
            model: str = "gemma3-270m", issued_at: int | None = None) -> Signed[OwnerCommand]:
    return sign_record(OwnerCommand(
        action=action, user_pubkey=user.public_key.hex(), node_pubkey=node_pub,  # type: ignore[arg-type]
        model=model, issued_at=int(time.time()) if issued_at is None else issued_at,
        nonce=secrets.token_hex(16)), user)


async def signed_post(h: Harness, key: SecretKey, target: str, body: dict[str, Any],
                      signer: SecretKey | None = None) -> Any:
    raw = json.dumps(body).encode()
    auth = sign_request(signer or key, method="POST", target=target, body=raw,
                        nonce=secrets.token_bytes(16), timestamp=int(time.time()))
    return await h.client.post(target, data=raw, headers={"X-Infernet-Auth": auth,
                                                          "Content-Type": "application/json"})


async def signed_get(h: Harness, key: SecretKey, target: str) -> Any:
    auth = sign_request(key, method="GET", target=target, body=b"",
                        nonce=secrets.token_bytes(16), timestamp=int(time.time()))
    return await h.client.get(target, headers={"X-Infernet-Auth": auth})


async def register(h: Harness, node: FakeNode, user: SecretKey) -> Any:
    return await signed_post(h, node.key, "/api/v1/nodes/register",
                             {"delegation": b64(delegation(user, node.pubkey))})


async def error_of(r: Any) -> str:
    return str((await r.get_json())["error_message"])


async def test_an_announced_node_registers_and_its_status_names_the_user(h: Harness) -> None:
    node, user = h.nodes.add(), SecretKey.generate().even_y()
    before = await (await h.client.get(f"/api/v1/nodes/{node.pubkey}/status")).get_json()
    assert "user_pubkey" not in before
    r = await register(h, node, user)
    assert r.status_code == 201, await r.get_data()
    doc = await r.get_json()
    assert (doc["node_id"], doc["user_pubkey"]) == (node.pubkey, user.public_key.hex())
    assert doc["scope"] == list(SCOPE) and doc["rotations"] == 0
    status = await (await h.client.get(f"/api/v1/nodes/{node.pubkey}/status")).get_json()
    assert status["user_pubkey"] == user.public_key.hex()
    assert status["user_npub"] == encode_npub(user.public_key)
    assert (await register(h, node, user)).status_code == 200  # again: replaced


async def test_registration_refusals(h: Harness) -> None:
    node, user = h.nodes.add(), SecretKey.generate().even_y()
    stranger = SecretKey.generate().even_y()
    target = "/api/v1/nodes/register"
    unseen = await signed_post(h, stranger, target,
                               {"delegation": b64(delegation(user, stranger.public_key.hex()))})
    assert unseen.status_code == 401 and "has not seen the node announce" in await error_of(unseen)
    wrong_signer = await signed_post(h, node.key, target,
                                     {"delegation": b64(delegation(user, node.pubkey))},
                                     signer=stranger)
    assert wrong_signer.status_code == 401 and "signature" in await error_of(wrong_signer)
    expired = await signed_post(h, node.key, target, {"delegation": b64(delegation(
        user, node.pubkey, issued_at=int(time.time()) - 7200, lifetime=3600))})
    assert expired.status_code == 401 and "expired" in await error_of(expired)
    forged = delegation(user, node.pubkey)
    forged = Signed(record=forged.record, sig=("0" * 127) + "1")
    bad = await signed_post(h, node.key, target, {"delegation": b64(forged)})
    assert bad.status_code == 401 and "signature" in await error_of(bad)
    junk = await signed_post(h, node.key, target, {"delegation": "AAAA"})
    assert junk.status_code == 400
    unknown_field = await signed_post(h, node.key, target, {"delegation": "x", "extra": 1})
    assert unknown_field.status_code == 400


async def test_a_rotated_node_re_registers_before_it_announces(h: Harness) -> None:
    node, user = h.nodes.add(), SecretKey.generate().even_y()
    signed = delegation(user, node.pubkey)
    assert (await signed_post(h, node.key, "/api/v1/nodes/register",
                              {"delegation": b64(signed)})).status_code == 201
    new = SecretKey.generate().even_y()
    rotation = sign_record(KeyRotation(old_pubkey=node.pubkey, new_pubkey=new.public_key.hex(),
                                       rotated_at=int(time.time())), node.key)
    r = await signed_post(h, new, "/api/v1/nodes/register",
                          {"delegation": b64(signed), "rotations": [b64(rotation)]})
    assert r.status_code == 201, await r.get_data()
    assert (await r.get_json())["rotations"] == 1
    # The old key routes no more jobs, even though its announcement is still fresh (and a
    # restarted coordinator retires what the store lists).
    assert registry.retired_keys(h.db) == [node.pubkey]
    assert h.state.table.get(node.pubkey) is None
    h.nodes.announce(node)
    assert h.state.table.get(node.pubkey) is None
    r = await h.post_json("/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 503 and node.jobs == []
    # Another user's chain cannot ride on this registration.
    other = SecretKey.generate().even_y()
    theirs = delegation(other, node.pubkey)
    r = await signed_post(h, new, "/api/v1/nodes/register",
                          {"delegation": b64(theirs), "rotations": [b64(rotation)]})
    assert r.status_code == 401


async def test_owner_commands_go_through_the_queue(h: Harness) -> None:
    node, user = h.nodes.add(), SecretKey.generate().even_y()
    assert (await register(h, node, user)).status_code == 201
    user_target = f"/api/v1/user/nodes/{encode_npub(node.key.public_key)}/commands"
    cmd = command(user, node.pubkey)
    r = await h.client.post(user_target, json={"command": b64(cmd)})
    assert r.status_code == 201, await r.get_data()
    queued = await r.get_json()
    assert (queued["status"], queued["action"], queued["model"]) == (
        "pending", "model_install", "gemma3-270m")
    again = await h.client.post(user_target, json={"command": b64(cmd)})
    assert again.status_code == 200 and (await again.get_json())["id"] == queued["id"]

    poll = f"/api/v1/nodes/{node.pubkey}/commands"
    listed = await (await signed_get(h, node.key, poll)).get_json()
    assert [c["id"] for c in listed["commands"]] == [queued["id"]]
    assert listed["commands"][0]["command"] == b64(cmd)
    stranger = h.nodes.add()
    assert (await signed_get(h, stranger.key, poll)).status_code == 401

    ack = await signed_post(h, node.key, f"{poll}/{queued['id']}/ack",
                            {"status": "done", "message": "Installed gemma3-270m"})
    assert ack.status_code == 200 and (await ack.get_json())["status"] == "done"
    state = await (await h.client.get(f"{user_target}/{queued['id']}")).get_json()
    assert (state["status"], state["message"]) == ("done", "Installed gemma3-270m")
    assert state["acked_at"] is not None
    assert (await (await signed_get(h, node.key, poll)).get_json())["commands"] == []
    missing = await signed_post(h, node.key, f"{poll}/{'0' * 64}/ack", {"status": "done"})
    assert missing.status_code == 404 and (await missing.get_json())["error"] == "not_found"


async def test_the_queue_takes_only_the_registered_users_fresh_commands(h: Harness) -> None:
    node, user = h.nodes.add(), SecretKey.generate().even_y()
    target = f"/api/v1/user/nodes/{node.pubkey}/commands"
    early = await h.client.post(target, json={"command": b64(command(user, node.pubkey))})
    assert early.status_code == 404 and "not registered" in await error_of(early)
    assert (await register(h, node, user)).status_code == 201

    other = SecretKey.generate().even_y()
    foreign = await h.client.post(target, json={"command": b64(command(other, node.pubkey))})
    assert foreign.status_code == 401
    assert "not signed by the user key this node is registered with" in await error_of(foreign)
    cmd = command(user, node.pubkey)
    tampered = Signed(record=cmd.record, sig=command(user, node.pubkey).sig)
    bad = await h.client.post(target, json={"command": b64(tampered)})
    assert bad.status_code == 401 and "signature" in await error_of(bad)
    elsewhere = await h.client.post(target, json={"command": b64(command(user, "ab" * 32))})
    assert elsewhere.status_code == 400 and "another node" in await error_of(elsewhere)
    stale = await h.client.post(target, json={"command": b64(command(
        user, node.pubkey, issued_at=int(time.time()) - 7200))})
    assert stale.status_code == 400 and "stale" in await error_of(stale)
    junk = await h.client.post(target, json={"command": base64.b64encode(b"\xa0").decode()})
    assert junk.status_code == 400


async def test_a_nodes_queue_is_bounded(h: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "MAX_PENDING", 2)
    node, user = h.nodes.add(), SecretKey.generate().even_y()
    assert (await register(h, node, user)).status_code == 201
    target = f"/api/v1/user/nodes/{node.pubkey}/commands"
    for _ in range(2):
        r = await h.client.post(target, json={"command": b64(command(user, node.pubkey))})
        assert r.status_code == 201
    full = await h.client.post(target, json={"command": b64(command(user, node.pubkey))})
    assert full.status_code == 429 and (await full.get_json())["error"] == "rate_limited"
