"""The directory protocol's two messages: which nodes serve a model (`specs/mesh.md` §6).

Owns: `DirectoryQuery` (client → node: a model, optionally pinned weights) and
`DirectoryAnswer` (node → client: signed announcements, as the NIP-01 event JSON bytes
that were gossiped), their length-prefixed msgpack encoding and its bounds.

Invariants: an answer holds at most `MAX_ENTRIES` events of at most `MAX_EVENT_SIZE` bytes
each and fits in `MAX_MESSAGE_SIZE`; the receiver verifies every event itself
(`announce.parse_announcement`), so a peer can leave nodes out but cannot invent one.
"""

from __future__ import annotations

from typing import Annotated, Final, TypeVar

import msgspec

from infernet.protocol.announce import DEFAULT_MAX_SIZE
from infernet.protocol.framing import (
    PREFIX,
    PrefixedDecoder,
    body_size,
    decode_body,
    encode_prefixed,
)

__all__ = [
    "DIRECTORY_PROTOCOL",
    "MAX_ENTRIES",
    "MAX_MESSAGE_SIZE",
    "PREFIX",
    "DirectoryAnswer",
    "DirectoryQuery",
    "decode_message",
    "encode_message",
    "message_decoder",
    "message_size",
]

DIRECTORY_PROTOCOL: Final = "/infernet/directory/1.0.0"
MAX_ENTRIES: Final = 64
MAX_EVENT_SIZE: Final = DEFAULT_MAX_SIZE
MAX_MESSAGE_SIZE: Final = MAX_ENTRIES * (MAX_EVENT_SIZE + 8) + 64


class DirectoryQuery(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Client → node: who serves ``model`` (with ``weights_hash``, when pinned)?"""

    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    weights_hash: Annotated[str, msgspec.Meta(max_length=128)] = ""


class DirectoryAnswer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Node → client: the announcements of online nodes serving the model, best first."""

    events: Annotated[
        list[Annotated[bytes, msgspec.Meta(max_length=MAX_EVENT_SIZE)]],
        msgspec.Meta(max_length=MAX_ENTRIES),
    ]


M = TypeVar("M", DirectoryQuery, DirectoryAnswer)
_WHAT: Final = "directory message"


def encode_message(message: DirectoryQuery | DirectoryAnswer) -> bytes:
    """Encode with a 4-byte big-endian length prefix.

    Raises:
        LocalProtocolError: the message breaks a bound.
    """
    return encode_prefixed(message, MAX_MESSAGE_SIZE, _WHAT)


def message_size(prefix: bytes) -> int:
    """The body length a 4-byte prefix announces.

    Raises:
        RemoteProtocolError: it exceeds `MAX_MESSAGE_SIZE`.
    """
    return body_size(prefix, MAX_MESSAGE_SIZE, _WHAT)


def decode_message(body: bytes, kind: type[M]) -> M:
    """Decode one message body (without its prefix).

    Raises:
        RemoteProtocolError: malformed, or it breaks a bound.
    """
    return decode_body(body, kind, _WHAT)


def message_decoder(kind: type[M]) -> PrefixedDecoder[M]:
    """A sans-IO decoder of ``kind`` messages as they arrive on a stream."""
    return PrefixedDecoder(kind, MAX_MESSAGE_SIZE, _WHAT)
