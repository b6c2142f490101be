"""Owner commands on the node: verify, run once, answer — whichever way they arrived.

Owns: `OwnerCommands`, which takes the bytes of a signed `OwnerCommand` (from the mesh
stream `/infernet/owner/1.0.0` or the coordinator's queue), checks it with the protocol's
`OwnerCommandVerifier` against this node's own delegation chain (``specs/keys.md`` §5),
runs it with the code ``infernet model install|remove`` uses, and returns a
`CommandResult`. Every command, accepted or refused, gets one log line.

Invariants:
- Nothing runs unless every check passed: a record that is not a signed command, a bad
  signature, another user, another node key, no ``commands`` scope, too old or future-dated,
  or a nonce seen before is refused with its reason.
- Nonces survive restarts: each accepted command is appended to ``commands/history.jsonl``
  before it runs, and a nonce found there is a replay (the protocol's memory alone would
  forget on restart). The file is compacted at start to the last `HISTORY_KEEP` entries.
- One command runs at a time (installs are long and touch the same config file).
"""

from __future__ import annotations

import io
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import msgspec
import trio
from rich.console import Console

from infernet.node.identity import load_authority
from infernet.protocol.delegation import (
    OwnerCommand,
    OwnerCommandVerifier,
    decode_signed,
    verify_signed,
)
from infernet.protocol.errors import InfernetError, SignatureError
from infernet.protocol.keys import PublicKey
from infernet.protocol.owner import CommandResult, command_id

__all__ = ["COORDINATOR", "HISTORY_FILE", "Executor", "OwnerCommands", "run_model_action"]

log = logging.getLogger("infernet.node.owner")

HISTORY_FILE: Final = "commands/history.jsonl"
HISTORY_KEEP: Final = 10_000
MAX_OUTCOMES: Final = 256
COORDINATOR: Final = "coordinator"  # the ``source`` of commands from the coordinator's queue

# Runs a verified command; returns a one-line summary, raises InfernetError on failure.
Executor = Callable[[OwnerCommand], Awaitable[str]]


class _Entry(msgspec.Struct):
    id: str
    nonce: str
    action: str
    model: str
    issued_at: int
    at: int


async def run_model_action(home: Path, command: OwnerCommand) -> str:
    """Run ``model_install`` / ``model_remove`` as ``infernet model install|remove`` does;
    return a one-line summary for the owner (what the engine did, the new served_models).

    Raises:
        InfernetError: the engine or the config refused (BackendError, ConfigError).
    """
    # The very steps of the CLI command; imported here, not at module level, because that
    # module also builds the command line (argparse, rich tables) the daemon never needs.
    from infernet.cli.model import install_one, remove_one

    quiet = Console(file=io.StringIO(), force_terminal=False, color_system=None)  # progress
    if command.action == "model_install":
        installed = await install_one(home, command.model, console=quiet)
        what = f"installed {installed.model} on {installed.engine}"
        served = installed.served_models
    else:
        removed = await remove_one(home, command.model, console=quiet)
        what = f"removed {removed.model}" + (
            f" (weights deleted from {removed.engine})" if removed.deleted else "")
        served = removed.served_models
    return f"{what}; served_models: {', '.join(served) or '(none)'}"


class OwnerCommands:
    """Verifies and runs owner commands for the node whose key is ``node_pubkey``."""

    def __init__(self, home: Path, node_pubkey: PublicKey, execute: Executor | None = None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.home = home
        self.node_pubkey = node_pubkey
        self._execute: Executor = execute or (lambda c: run_model_action(home, c))
        self._clock = clock
        self._verifier = OwnerCommandVerifier()
        self._lock = trio.Lock()
        self._seen: set[str] = set()
        # Outcomes of the commands run by this process, so a queued command whose ack was
        # lost gets its real outcome again instead of "already run" (coordinator only).
        self._outcomes: OrderedDict[str, CommandResult] = OrderedDict()
        self._history = home / HISTORY_FILE
        self._load_history()

    def _load_history(self) -> None:
        try:
            lines = self._history.read_bytes().splitlines()
        except FileNotFoundError:
            return
        entries = []
        for line in lines[-HISTORY_KEEP:]:
            try:
                entries.append(msgspec.json.decode(line, type=_Entry))
            except msgspec.MsgspecError:
                continue  # a torn last line after a crash: the entry before it still counts
        self._seen = {e.nonce for e in entries}
        if len(entries) != len(lines):
            self._history.write_bytes(b"".join(msgspec.json.encode(e) + b"\n" for e in entries))

    def _remember(self, cid: str, command: OwnerCommand, now: int) -> None:
        self._seen.add(command.nonce)
        self._history.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        entry = _Entry(id=cid, nonce=command.nonce, action=command.action, model=command.model,
                       issued_at=command.issued_at, at=now)
        with self._history.open("ab") as f:
            f.write(msgspec.json.encode(entry) + b"\n")

    async def handle(self, data: bytes, source: str) -> CommandResult:
        """Verify and run one signed command from ``source`` (a peer id or "coordinator").

        Cancel-safe before the command starts; a command that started runs to its end in
        the engine even if the caller goes away. Never raises for bad input.
        """
        try:
            signed = decode_signed(data, OwnerCommand)
        except InfernetError as exc:
            log.warning("owner command from %s refused: not a signed command (%s)", source, exc)
            return CommandResult(status="refused", code="unauthorized",
                                 message=f"not a signed owner command: {exc}")
        cid = command_id(signed)
        command = signed.record
        what = f"owner command {cid[:16]} {command.action} {command.model!r} from {source}"
        now = int(self._clock())
        try:
            authority = load_authority(self.home, now)
            if authority.current_key != self.node_pubkey:
                raise SignatureError("this node's delegation does not cover its running key")
            if source == COORDINATOR and cid in self._outcomes:
                verify_signed(signed)  # the same record, signed by the same user
                log.info("%s: ran before; repeating its outcome", what)
                return self._outcomes[cid]
            if command.nonce in self._seen:
                self._verifier.verify(signed, authority=authority, now=now)  # other reasons first
                raise SignatureError("command was already run (nonce reused)")
            self._verifier.verify(signed, authority=authority, now=now)
        except InfernetError as exc:
            log.warning("%s refused: %s", what, exc)
            return CommandResult(command_id=cid, status="refused", code="unauthorized",
                                 message=str(exc))
        async with self._lock:
            try:
                self._remember(cid, command, now)
            except OSError as exc:  # without the record a replay could run it twice
                log.error("%s not run: cannot record it (%s)", what, exc)  # noqa: TRY400
                return CommandResult(command_id=cid, status="failed", code="internal_error",
                                     message=f"the node cannot record the command: {exc}")
            log.info("%s accepted", what)
            try:
                summary = await self._execute(command)
            except InfernetError as exc:
                log.warning("%s failed: %s [%s]", what, exc, exc.code)
                result = CommandResult(command_id=cid, status="failed", code=exc.code,
                                       message=str(exc))
            else:
                log.info("%s done: %s", what, summary)
                result = CommandResult(command_id=cid, status="done", message=summary,
                                       served_models=_served_models(self.home))
        self._outcomes[cid] = result
        while len(self._outcomes) > MAX_OUTCOMES:
            self._outcomes.popitem(last=False)
        return result


def _served_models(home: Path) -> tuple[str, ...]:
    from infernet.backends.inventory import read_served_models
    from infernet.node.config import config_path

    try:
        return read_served_models(config_path(home))
    except (OSError, msgspec.DecodeError):
        return ()
