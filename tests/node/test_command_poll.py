"""The node's queue poller: each queued command is handed over, then acknowledged, signed."""

from __future__ import annotations

import base64
import json
import secrets
import time
from pathlib import Path

import httpx

from infernet.node.command_poll import poll_once
from infernet.node.config import init_home
from infernet.node.identity import ensure_identity, load_user_key, user_key_path
from infernet.node.owner import OwnerCommands
from infernet.protocol.auth import AUTH_HEADER, AuthVerifier
from infernet.protocol.delegation import OwnerCommand, encode_signed, sign_record
from infernet.protocol.keys import PublicKey


async def test_poll_runs_and_acknowledges_each_command(tmp_path: Path) -> None:
    key, _ = init_home(tmp_path)
    ensure_identity(tmp_path, key, int(time.time()), env={})
    user = load_user_key(user_key_path(tmp_path, env={}))
    ran: list[str] = []

    async def execute(command: OwnerCommand) -> str:
        ran.append(command.model)
        return "ok"

    good = sign_record(OwnerCommand(
        action="model_remove", user_pubkey=user.public_key.hex(),
        node_pubkey=key.public_key.hex(), model="m1", issued_at=int(time.time()),
        nonce=secrets.token_hex(16)), user)
    queued = [{"id": "c1", "command": base64.b64encode(encode_signed(good)).decode()},
              {"id": "c2", "command": "not base64!"}]
    verifier = AuthVerifier(lambda kid: PublicKey.from_hex(kid))
    acks: dict[str, dict[str, str]] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        verifier.verify(request.headers[AUTH_HEADER], key_id=key.public_key.hex(),
                        method=request.method, target=request.url.raw_path.decode(),
                        body=request.content, now=time.time())  # raises if unsigned
        if request.method == "GET":
            return httpx.Response(200, json={"commands": queued})
        acks[request.url.path.split("/")[-2]] = json.loads(request.content)
        return httpx.Response(200, json={})

    commands = OwnerCommands(tmp_path, key.public_key, execute)
    async with httpx.AsyncClient(base_url="http://coordinator",
                                 transport=httpx.MockTransport(handler)) as client:
        assert await poll_once(client, key, commands) == 2
    assert ran == ["m1"]
    assert acks["c1"]["status"] == "done"
    assert acks["c2"]["status"] == "refused"
    assert "not a signed owner command" in acks["c2"]["message"]
