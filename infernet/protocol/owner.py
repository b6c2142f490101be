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
from infernet.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

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
_PREFIX: Final = 4

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

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final[msgspec.msgpack.Decoder[OwnerFrame]] = msgspec.msgpack.Decoder(OwnerFrame)


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
    try:
        body = _encoder.encode(frame)
    except (OverflowError, msgspec.EncodeError, UnicodeEncodeError) as exc:
        raise LocalProtocolError(f"owner frame cannot be encoded: {exc}") from None
    if len(body) > MAX_OWNER_FRAME:
        raise LocalProtocolError(f"owner frame of {len(body)} bytes exceeds {MAX_OWNER_FRAME}")
    return len(body).to_bytes(_PREFIX, "big") + body


class OwnerFrameDecoder:
    """Turns the bytes of an owner stream into frames; feed it with `receive_data`."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the peer.

        Raises:
            RemoteProtocolError: more than one maximal frame and its prefix arrived.
        """
        if len(self._buf) + len(data) > MAX_OWNER_FRAME + _PREFIX:
            raise RemoteProtocolError("peer sent more than one owner frame may hold")
        self._buf += data

    def next_frame(self) -> OwnerFrame | None:
        """The next complete frame, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: an oversized length prefix or an undecodable body.
        """
        if len(self._buf) < _PREFIX:
            return None
        size = int.from_bytes(self._buf[:_PREFIX], "big")
        if size > MAX_OWNER_FRAME:
            raise RemoteProtocolError(f"owner frame of {size} bytes exceeds {MAX_OWNER_FRAME}")
        if len(self._buf) < _PREFIX + size:
            return None
        body = bytes(self._buf[_PREFIX:_PREFIX + size])
        del self._buf[:_PREFIX + size]
        try:
            return _decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError,
                RecursionError) as exc:
            raise RemoteProtocolError(f"undecodable owner frame: {exc}") from None
