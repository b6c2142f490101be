"""The node's link to the coordinator's owner-command queue: register, poll, run, acknowledge.

Owns: `follow_coordinator_commands`, the daemon task started when ``coordinator_url`` is
set (``specs/http-api.md`` §"Owner commands"): it registers the node (retrying until the
coordinator has seen its announcement), then every `POLL_EVERY` seconds fetches its queued
commands with a signed ``GET /api/v1/nodes/:id/commands``, hands each to `OwnerCommands`
and reports the outcome with ``POST …/commands/:cmd_id/ack``.

Invariants: every call has a timeout; while the coordinator is down or refusing, the wait
between attempts doubles up to `BACKOFF_MAX`; a command is acknowledged after it ran (a
node that dies in between sees it again and refuses it as a replay, which it acknowledges).
"""

from __future__ import annotations

import base64
import binascii
import logging
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import trio

from infernet.node.config import NodeConfig
from infernet.node.owner import COORDINATOR, OwnerCommands
from infernet.node.registration import RegistrationError, register_node, signed_call
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import SecretKey
from infernet.protocol.owner import CommandResult

__all__ = ["POLL_EVERY", "follow_coordinator_commands", "poll_once"]

log = logging.getLogger("infernet.node.commands")

POLL_EVERY: Final = 10.0
BACKOFF_MAX: Final = 300.0
REGISTER_RETRY: Final = 1.0
CALL_TIMEOUT: Final = 10.0
MAX_PER_POLL: Final = 16


class _Queued(msgspec.Struct):
    id: str
    command: str


class _Queue(msgspec.Struct):
    commands: list[_Queued] = []


async def poll_once(client: httpx.AsyncClient, key: SecretKey,
                    commands: OwnerCommands) -> int:
    """Fetch the queued commands, run each, acknowledge each; return how many ran.

    Raises:
        RegistrationError: the coordinator is unreachable or refused a call.
    """
    node_id = key.public_key.hex()
    doc = await signed_call(client, key, "GET",
                            f"/api/v1/nodes/{node_id}/commands?limit={MAX_PER_POLL}",
                            timeout=CALL_TIMEOUT)
    try:
        queue = msgspec.convert(doc, _Queue)
    except msgspec.ValidationError as exc:
        raise RegistrationError(f"coordinator sent a malformed command list: {exc}") from None
    for item in queue.commands[:MAX_PER_POLL]:
        try:
            data = base64.b64decode(item.command, validate=True)
        except (binascii.Error, ValueError):
            data = b""
        result = await commands.handle(data, COORDINATOR)
        await _ack(client, key, item.id, result)
    return len(queue.commands)


async def _ack(client: httpx.AsyncClient, key: SecretKey, cmd_id: str,
               result: CommandResult) -> None:
    body: dict[str, Any] = {"status": result.status, "code": result.code,
                            "message": result.message[:2000]}
    await signed_call(client, key, "POST",
                      f"/api/v1/nodes/{key.public_key.hex()}/commands/{cmd_id}/ack", body,
                      timeout=CALL_TIMEOUT)


async def follow_coordinator_commands(home: Path, config: NodeConfig, key: SecretKey,
                                      commands: OwnerCommands, *,
                                      poll_every: float = POLL_EVERY) -> None:
    """Register with the coordinator, then poll its command queue until cancelled.

    Never raises for coordinator trouble (logged, retried with backoff). Cancel-safe.
    """
    registered = False
    backoff = REGISTER_RETRY  # the first announcement reaches the coordinator within seconds
    async with httpx.AsyncClient(base_url=config.coordinator_url.rstrip("/"),
                                 timeout=CALL_TIMEOUT) as client:
        while True:
            try:
                if not registered:
                    await register_node(home, config, key, timeout=CALL_TIMEOUT)
                    registered = True
                    log.info("registered with the coordinator %s", config.coordinator_url)
                await poll_once(client, key, commands)
                backoff = poll_every
            except InfernetError as exc:
                # 401 at first is normal: the coordinator has not seen our announcement yet.
                early = exc.code == "unauthorized" and not registered and backoff < poll_every
                log.log(logging.INFO if early else logging.WARNING,
                        "coordinator commands: %s; retrying in %.0fs", exc, backoff)
                await trio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            await trio.sleep(poll_every)
