"""Owner commands on the node: run once when signed by the delegating user, refused otherwise."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from infernet.node.config import init_home
from infernet.node.identity import ensure_identity, load_user_key, user_key_path
from infernet.node.owner import OwnerCommands
from infernet.protocol.delegation import OwnerCommand, Signed, encode_signed, sign_record
from infernet.protocol.errors import BackendError
from infernet.protocol.keys import SecretKey


class Recorder:
    def __init__(self, fail: BackendError | None = None) -> None:
        self.ran: list[tuple[str, str]] = []
        self.fail = fail

    async def __call__(self, command: OwnerCommand) -> str:
        if self.fail is not None:
            raise self.fail
        self.ran.append((command.action, command.model))
        return f"{command.action} {command.model} ok"


@pytest.fixture
def home(tmp_path: Path) -> Path:
    key, _ = init_home(tmp_path)
    ensure_identity(tmp_path, key, int(time.time()), env={})
    return tmp_path


def node_key(home: Path) -> SecretKey:
    return SecretKey.from_hex((home / "keys" / "node.key").read_text().strip())


def user_key(home: Path) -> SecretKey:
    return load_user_key(user_key_path(home, env={}))


def signed(user: SecretKey, node: str, *, action: str = "model_install",
           issued_at: int | None = None) -> Signed[OwnerCommand]:
    return sign_record(OwnerCommand(
        action=action, user_pubkey=user.public_key.hex(), node_pubkey=node,  # type: ignore[arg-type]
        model="gemma3-270m", issued_at=int(time.time()) if issued_at is None else issued_at,
        nonce=secrets.token_hex(16)), user)


async def test_the_delegating_users_command_runs_once(home: Path) -> None:
    run = Recorder()
    commands = OwnerCommands(home, node_key(home).public_key, run)
    cmd = encode_signed(signed(user_key(home), node_key(home).public_key.hex()))
    result = await commands.handle(cmd, "peer-a")
    assert (result.status, result.message) == ("done", "model_install gemma3-270m ok")
    assert run.ran == [("model_install", "gemma3-270m")]
    again = await commands.handle(cmd, "peer-a")
    assert again.status == "refused" and "already run" in again.message
    # The nonce memory survives a restart of the node.
    restarted = OwnerCommands(home, node_key(home).public_key, run)
    replay = await restarted.handle(cmd, "peer-b")
    assert replay.status == "refused" and "already run" in replay.message
    assert run.ran == [("model_install", "gemma3-270m")]


async def test_refusals_name_their_reason_and_run_nothing(home: Path) -> None:
    run = Recorder()
    commands = OwnerCommands(home, node_key(home).public_key, run)
    node, user = node_key(home).public_key.hex(), user_key(home)
    stranger = SecretKey.generate().even_y()
    forged = signed(user, node)
    cases = {
        b"\x00garbage": "not a signed owner command",
        encode_signed(signed(stranger, node)): "not from the user that delegated this node",
        encode_signed(signed(user, "ab" * 32)): "another node key",
        encode_signed(signed(user, node, issued_at=int(time.time()) - 7200)): "too old",
        encode_signed(signed(user, node, issued_at=int(time.time()) + 3600)): "future",
        encode_signed(Signed(record=forged.record, sig=signed(user, node).sig)): "signature",
    }
    for data, reason in cases.items():
        result = await commands.handle(data, "peer")
        assert result.status == "refused" and result.code == "unauthorized", result
        assert reason in result.message, (reason, result.message)
    assert run.ran == []


async def test_a_failed_command_reports_the_engines_error(home: Path) -> None:
    run = Recorder(BackendError("the embedded engine cannot pull 'x'", code="bad_request"))
    commands = OwnerCommands(home, node_key(home).public_key, run)
    result = await commands.handle(
        encode_signed(signed(user_key(home), node_key(home).public_key.hex())), "peer")
    assert (result.status, result.code) == ("failed", "bad_request")
    assert "cannot pull" in result.message


async def test_without_a_delegation_every_command_is_refused(tmp_path: Path) -> None:
    key, _ = init_home(tmp_path)
    commands = OwnerCommands(tmp_path, key.public_key, Recorder())
    result = await commands.handle(
        encode_signed(signed(SecretKey.generate().even_y(), key.public_key.hex())), "peer")
    assert result.status == "refused" and "delegation.cbor is missing" in result.message


async def test_a_queued_command_whose_ack_was_lost_gets_its_outcome_again(home: Path) -> None:
    run = Recorder()
    commands = OwnerCommands(home, node_key(home).public_key, run)
    cmd = encode_signed(signed(user_key(home), node_key(home).public_key.hex()))
    first = await commands.handle(cmd, "coordinator")
    again = await commands.handle(cmd, "coordinator")
    assert first.status == again.status == "done" and first.command_id == again.command_id
    assert len(run.ran) == 1
    over_mesh = await commands.handle(cmd, "16Uiu2HAmPeer")  # a replay from anyone else
    assert over_mesh.status == "refused" and "already run" in over_mesh.message
