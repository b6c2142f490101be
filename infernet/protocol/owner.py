"""Owner commands on the wire: the `/infernet/owner/1.0.0` frames and the command id.

Owns: the two messages of the owner-command stream (``specs/keys.md`` §5.2) — the client
sends one `CommandRequest` carrying a signed `OwnerCommand` (canonical CBOR), the node
answers one `CommandResult` — their msgpack encoding behind a 4-byte big-endian length
prefix, `OwnerFrameDecoder` (sans-IO), and `command_id`, the name a command has in the
coordinator's queue and in logs.

Invariants: frames are at most `MAX_OWNER_FRAME` bytes; `OwnerFrameDecoder` raises nothing
but `RemoteProtocolError` whatever bytes it is fed; a command id depends only on the
command record (not its signature), so one command keeps one id everywhere.
"""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from infernet.protocol.canonical import encode_record, record_digest
from infernet.protocol.delegation import OwnerCommand, Signed
from infernet.protocol.errors import ErrorCode
from infernet.protocol.framing import PrefixedDecoder, encode_prefixed

__all__ = [
    "MAX_OWNER_FRAME",
    "CommandRequest",
    "CommandResult",
    "CommandStatus",
    "OwnerFrame",
    "OwnerFrameDecoder",
    "command_id",
    "encode_owner_frame",
]

MAX_OWNER_FRAME: Final = 16 << 10  # one signed command is ~400 bytes; a result a few hundred

CommandStatus = Literal["done", "failed", "refused"]
"""``done``: verified and executed; ``failed``: verified, but executing it failed;
``refused``: not verified (signature, user, node, scope, age, replay) — nothing was run."""


class CommandRequest(msgspec.Struct, frozen=True, kw_only=True, tag="command"):
    """Client → node: one signed owner command (canonical CBOR of ``Signed[OwnerCommand]``)."""

    command: Annotated[bytes, msgspec.Meta(max_length=8192)]


class CommandResult(msgspec.Struct, frozen=True, kw_only=True, tag="result"):
    """Node → client: what became of the command. ``code`` is empty when ``done``."""

    command_id: str = ""
    status: CommandStatus
    code: ErrorCode | Literal[""] = ""
    message: Annotated[str, msgspec.Meta(max_length=2048)] = ""
    served_models: tuple[str, ...] = ()


OwnerFrame = CommandRequest | CommandResult


def command_id(signed: Signed[OwnerCommand]) -> str:
    """The hex SHA-256 of the command record's canonical CBOR (what its signer signed).

    Raises:
        LocalProtocolError: the record cannot be encoded (it never came from a decoder).
    """
    return record_digest(encode_record(signed.record)).hex()


def encode_owner_frame(frame: OwnerFrame) -> bytes:
    """Encode one frame with its length prefix.

    Raises:
        LocalProtocolError: the frame exceeds `MAX_OWNER_FRAME` or cannot be encoded.
    """
    return encode_prefixed(frame, MAX_OWNER_FRAME, "owner frame")


class OwnerFrameDecoder(PrefixedDecoder[OwnerFrame]):
    """Turns the bytes of an owner stream into frames; feed it with `receive_data`, take
    them with `next_frame` (None: more bytes are needed)."""

    def __init__(self) -> None:
        super().__init__(OwnerFrame, MAX_OWNER_FRAME, "owner frame")  # type: ignore[arg-type]
