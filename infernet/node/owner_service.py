"""The node's owner-command service: the mesh handler and the coordinator queue, wired up.

Owns: `serve_owner_commands`, run by the daemon (`infernet.node.daemon.run_node`): it
delegates the node key when the user key is at hand and the delegation is missing or stale
(never creating a user key), registers the `/infernet/owner/1.0.0` stream handler, and, when
``coordinator_url`` is set and the delegation verifies, follows the coordinator's command
queue (`infernet.node.command_poll`). Also `refresh_model_keys`, which keeps one delegated
model key per served model (``specs/keys.md`` §4.3).

Invariants: the stream handler is always registered, so a node without a valid delegation
answers each command with the reason it refuses it instead of resetting the stream.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import trio
from trio_typing import TaskStatus

from infernet.mesh.host import MeshHost
from infernet.mesh.owner import OWNER_PROTOCOL, serve_owner_stream
from infernet.node.command_poll import follow_coordinator_commands
from infernet.node.config import NodeConfig
from infernet.node.identity import ensure_identity, ensure_model_keys, load_authority
from infernet.node.owner import OwnerCommands
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import SecretKey

__all__ = ["refresh_model_keys", "serve_owner_commands"]

log = logging.getLogger("infernet.node.owner")


def refresh_model_keys(home: Path, key: SecretKey, weights: Mapping[str, str]) -> None:
    """Create or re-delegate the model key of each served model; log, never raise."""
    try:
        for model_key in ensure_model_keys(home, key, weights, int(time.time())):
            if model_key.issued:
                log.info("model key for %s: %s (delegated by this node)", model_key.model,
                         model_key.public_key.hex())
    except InfernetError as exc:
        log.warning("model keys: %s", exc)


async def serve_owner_commands(home: Path, config: NodeConfig, key: SecretKey, mesh: MeshHost,
                               *, task_status: TaskStatus[OwnerCommands] = trio.TASK_STATUS_IGNORED
                               ) -> None:
    """Serve owner commands until cancelled; ``started(commands)`` once the handler is set."""
    now = int(time.time())
    delegated = False
    try:
        report = ensure_identity(home, key, now, create_user_key=False)
        if report.issued_delegation:
            log.info("delegated this node from the user key in %s", report.user_key_file)
        load_authority(home, now)
        delegated = True
    except InfernetError as exc:
        log.warning("owner commands will be refused: %s", exc)
    commands = OwnerCommands(home, key.public_key)

    async def handle(stream: Any) -> None:
        await serve_owner_stream(stream, commands.handle)

    mesh.host.set_stream_handler(OWNER_PROTOCOL, handle)
    task_status.started(commands)
    if delegated and config.coordinator_url:
        await follow_coordinator_commands(home, config, key, commands)
    await trio.sleep_forever()  # the stream handler lives as long as the node
