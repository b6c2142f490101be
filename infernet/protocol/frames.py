"""Job-protocol frames: the messages of `/infernet/job/1.0.0` and their framing.

Owns: the frame types (a msgspec tagged union), their msgpack encoding, the 4-byte
big-endian length prefix and the size bounds. Spec: ``specs/job-protocol.md``.

Invariants:
- Every frame names its ``job_id``; a new field always gets a default, and unknown fields
  from newer peers are ignored (msgspec ignores them by default).
- `FrameDecoder` never raises anything but `RemoteProtocolError`, whatever bytes it is fed,
  and never buffers more than one maximal frame plus one read.
"""

from __future__ import annotations

from typing import Final

import msgspec

from infernet.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from infernet.protocol.receipt import SignedReceipt

__all__ = [
    "MAX_FRAME_SIZE",
    "NEED_DATA",
    "Accepted",
    "Cancel",
    "Chunk",
    "FinalFrame",
    "Frame",
    "FrameDecoder",
    "JobErrorFrame",
    "JobRequest",
    "Message",
    "NeedData",
    "encode_frame",
]

MAX_FRAME_SIZE: Final = 1 << 20  # 1 MiB: a long prompt fits; a hostile length prefix does not.
_PREFIX: Final = 4


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One chat message inside a job request."""

    role: str
    content: str


class JobRequest(msgspec.Struct, frozen=True, kw_only=True, tag="request"):
    """Client → node: run this chat job."""

    job_id: str
    model: str
    messages: tuple[Message, ...]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    client_pubkey: str = ""
    # End-to-end encryption (§8): a NIP-44 v2 payload of the private fields, sealed from
    # client_pubkey to encrypted_to (the node key or a model key); messages is then empty.
    encrypted: str = ""
    encrypted_to: str = ""
    # Routing constraints (specs/mesh.md "Routing"): only nodes announcing these exact
    # weights, and not above this output price per 1000 tokens.
    weights_hash: str = ""
    max_price_per_1k: float | None = None


class Accepted(msgspec.Struct, frozen=True, kw_only=True, tag="accepted"):
    """Node → client: the job has a slot and generation is starting."""

    job_id: str
    node_pubkey: str = ""
    model: str = ""


class Chunk(msgspec.Struct, frozen=True, kw_only=True, tag="chunk"):
    """Node → client: one or more tokens of text (tokens are batched per frame)."""

    job_id: str
    text: str
    encrypted: str = ""  # §8: NIP-44 payload of {job_id, seq, text}; text is then ""


class FinalFrame(msgspec.Struct, frozen=True, kw_only=True, tag="final"):
    """Node → client: generation finished; usage as the engine reported it."""

    job_id: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "stop"
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0
    receipt: SignedReceipt | None = None  # the node-signed CPR (specs/receipts.md)


class JobErrorFrame(msgspec.Struct, frozen=True, kw_only=True, tag="error"):
    """Node → client: the job failed with a wire error code (a client stops with Cancel)."""

    job_id: str
    code: ErrorCode
    message: str = ""


class Cancel(msgspec.Struct, frozen=True, kw_only=True, tag="cancel"):
    """Client → node: stop generating this job."""

    job_id: str


Frame = JobRequest | Accepted | Chunk | FinalFrame | JobErrorFrame | Cancel


class NeedData:
    """Sentinel type: the decoder needs more bytes before it can yield a frame."""

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData()

_encoder: Final = msgspec.msgpack.Encoder()
_decoder: Final[msgspec.msgpack.Decoder[Frame]] = msgspec.msgpack.Decoder(Frame)


def encode_frame(frame: Frame) -> bytes:
    """Encode one frame with its length prefix.

    Raises:
        LocalProtocolError: the encoded frame exceeds `MAX_FRAME_SIZE`, or a string holds
            a lone surrogate (no UTF-8 form).
    """
    try:
        body = _encoder.encode(frame)
    except (OverflowError, msgspec.EncodeError, UnicodeEncodeError) as exc:
        raise LocalProtocolError(f"frame cannot be encoded: {exc}") from None
    if len(body) > MAX_FRAME_SIZE:
        raise LocalProtocolError(f"frame of {len(body)} bytes exceeds {MAX_FRAME_SIZE}")
    return len(body).to_bytes(_PREFIX, "big") + body


class FrameDecoder:
    """Turns a byte stream into frames; sans-IO, feed it with `receive_data`."""

    def __init__(self, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        self._buf = bytearray()
        self._max = max_frame_size

    def receive_data(self, data: bytes) -> None:
        """Buffer bytes read from the peer.

        Raises:
            RemoteProtocolError: the buffer would exceed one maximal frame plus its prefix.
        """
        if len(self._buf) + len(data) > self._max + _PREFIX + (64 << 10):
            raise RemoteProtocolError("peer sent more data than one frame may hold")
        self._buf += data

    def next_frame(self) -> Frame | NeedData:
        """Return the next complete frame, or `NEED_DATA`.

        Raises:
            RemoteProtocolError: oversized length prefix or an undecodable frame body.
        """
        if len(self._buf) < _PREFIX:
            return NEED_DATA
        size = int.from_bytes(self._buf[:_PREFIX], "big")
        if size > self._max:
            raise RemoteProtocolError(f"frame of {size} bytes exceeds limit {self._max}")
        if len(self._buf) < _PREFIX + size:
            return NEED_DATA
        body = bytes(self._buf[_PREFIX : _PREFIX + size])
        del self._buf[: _PREFIX + size]
        try:
            return _decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError) as exc:
            raise RemoteProtocolError(f"undecodable frame: {exc}") from None
        except RecursionError:
            raise RemoteProtocolError("frame nests too deeply") from None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf)
