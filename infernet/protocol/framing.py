"""Length-prefixed msgpack messages: the framing of the small one-exchange stream
protocols (owner commands, directory queries). Sans-IO.

A message is a 4-byte big-endian body length, then a msgpack body of at most ``max_size``
bytes. (The job protocol's `frames.FrameDecoder` keeps its own tuned copy of this loop: it
is the hot path.)

Invariants: decoders raise nothing but `RemoteProtocolError`; encoders nothing but
`LocalProtocolError`; the buffer never holds more than one maximal message and its prefix.
"""

from __future__ import annotations

from typing import Final, Generic, TypeVar

import msgspec

from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError

__all__ = ["PREFIX", "PrefixedDecoder", "body_size", "decode_body", "encode_prefixed"]

PREFIX: Final = 4

T = TypeVar("T")
_encoder: Final = msgspec.msgpack.Encoder()


def encode_prefixed(message: object, max_size: int, what: str) -> bytes:
    """Encode ``message`` with its length prefix.

    Raises:
        LocalProtocolError: it cannot be encoded, or its body exceeds ``max_size``.
    """
    try:
        body = _encoder.encode(message)
    except (OverflowError, msgspec.EncodeError, UnicodeEncodeError) as exc:
        raise LocalProtocolError(f"{what} cannot be encoded: {exc}") from None
    if len(body) > max_size:
        raise LocalProtocolError(f"{what} of {len(body)} bytes exceeds {max_size}")
    return len(body).to_bytes(PREFIX, "big") + body


def body_size(prefix: bytes, max_size: int, what: str) -> int:
    """The body length a prefix announces.

    Raises:
        RemoteProtocolError: it exceeds ``max_size``.
    """
    size = int.from_bytes(prefix, "big")
    if size > max_size:
        raise RemoteProtocolError(f"{what} of {size} bytes exceeds {max_size}")
    return size


def decode_body(body: bytes, kind: type[T], what: str) -> T:
    """Decode one message body (without its prefix) as ``kind``.

    Raises:
        RemoteProtocolError: malformed, or it breaks a bound of ``kind``.
    """
    try:
        return msgspec.msgpack.decode(body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, RecursionError) as exc:
        raise RemoteProtocolError(f"undecodable {what}: {exc}") from None


class PrefixedDecoder(Generic[T]):
    """Turns a byte stream into ``kind`` messages; feed it with `receive_data`."""

    def __init__(self, kind: type[T], max_size: int, what: str) -> None:
        self._buf = bytearray()
        self._kind = kind
        self._max = max_size
        self._what = what

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the peer.

        Raises:
            RemoteProtocolError: more than one maximal message and its prefix arrived.
        """
        if len(self._buf) + len(data) > self._max + PREFIX:
            raise RemoteProtocolError(f"peer sent more than one {self._what} may hold")
        self._buf += data

    def next_frame(self) -> T | None:
        """The next complete message, or None when more bytes are needed.

        Raises:
            RemoteProtocolError: an oversized length prefix or an undecodable body.
        """
        if len(self._buf) < PREFIX:
            return None
        end = PREFIX + body_size(bytes(self._buf[:PREFIX]), self._max, self._what)
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[PREFIX:end])
        del self._buf[:end]
        return decode_body(body, self._kind, self._what)
