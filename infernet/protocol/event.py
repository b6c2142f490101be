"""Nostr events (NIP-01): the signed envelope every announcement travels in.

Owns: ``UnsignedEvent`` and ``Event``, the canonical serialization hashed into an event id,
signing, verification, and the bounded JSON decoding of untrusted events
(DESIGN.md §3 "Announcements"; NIP-01 "Events and signatures").

Invariants:

- Signed and unsigned events are different types; only ``sign_event`` makes an ``Event``
  from an ``UnsignedEvent``.
- ``id`` = SHA-256 of the UTF-8 JSON ``[0,pubkey,created_at,kind,tags,content]`` with no
  whitespace, non-ASCII verbatim and only JSON's mandatory escapes (NIP-01's list, plus
  ``\\u00XX`` for the other control characters, as every mainstream library writes them).
- ``sig`` = BIP-340 signature of the 32-byte id by ``pubkey``.
- ``decode_event`` raises nothing but ``RemoteProtocolError``: oversized input, bad JSON,
  bad UTF-8, wrong field types, and hex fields that are not lower-case of the right length
  (id 64, pubkey 64, sig 128) are all rejected there. A decoded event is *not* yet verified;
  call ``verify_event``.
- Unknown top-level fields are ignored (forward compatibility); they are not hashed.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final, NewType

import msgspec

from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError, SignatureError
from infernet.protocol.keys import KeyFormatError, PublicKey, SecretKey

__all__ = [
    "Event",
    "EventId",
    "Tags",
    "UnsignedEvent",
    "compute_id",
    "decode_event",
    "encode_event",
    "serialize_for_id",
    "sign_event",
    "tag_values",
    "verify_event",
]

EventId = NewType("EventId", str)
"""64 lower-case hex characters: the SHA-256 of the event's canonical serialization."""

# \A…\Z, not ^…$: msgspec uses re.search, and "$" also matches before a trailing "\n".
_Hex64 = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{64}\Z")]
# NIP-01 gives no bounds; these keep every value exact in JavaScript and within u16 kinds.
_Timestamp = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
_Kind = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Tags = tuple[tuple[str, ...], ...]

_ENCODER: Final = msgspec.json.Encoder()
_DECODE_ERRORS: Final = (msgspec.MsgspecError, UnicodeDecodeError, RecursionError)


class UnsignedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event before signing: everything that is hashed into the id."""

    pubkey: _Hex64
    created_at: _Timestamp
    kind: _Kind
    tags: Tags = ()
    content: str = ""


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """A signed NIP-01 event; field order is the order NIP-01 prints them in.

    ``id`` and ``pubkey`` are 64 and ``sig`` 128 lower-case hex characters. ``decode_event``
    checks that itself (a hex round trip is twice as fast as msgspec's regex patterns, and
    every announcement received goes through it); an Event built in code is checked by
    ``verify_event``.
    """

    id: EventId
    pubkey: str
    created_at: _Timestamp
    kind: _Kind
    tags: Tags
    content: str
    sig: str


def serialize_for_id(ev: UnsignedEvent | Event) -> bytes:
    """Return the canonical bytes ``[0,pubkey,created_at,kind,tags,content]`` that are hashed.

    Raises:
        LocalProtocolError: a string holds a lone surrogate, which has no UTF-8 form.
    """
    try:
        # msgspec writes compact JSON, UTF-8 verbatim, and escapes exactly what NIP-01 and
        # JSON require; tests check it byte for byte against json.dumps(ensure_ascii=False).
        return _ENCODER.encode([0, ev.pubkey, ev.created_at, ev.kind, ev.tags, ev.content])
    except UnicodeEncodeError:
        raise LocalProtocolError("event text is not valid Unicode (lone surrogate)") from None


def compute_id(ev: UnsignedEvent | Event) -> EventId:
    """Return the NIP-01 id: lower-case hex SHA-256 of ``serialize_for_id(ev)``.

    Raises:
        LocalProtocolError: as ``serialize_for_id``.
    """
    return EventId(hashlib.sha256(serialize_for_id(ev)).hexdigest())


def sign_event(unsigned: UnsignedEvent, secret_key: SecretKey, aux: bytes | None = None) -> Event:
    """Compute the id and sign it; ``aux`` is BIP-340 aux randomness (None: fresh).

    Raises:
        LocalProtocolError: ``unsigned.pubkey`` is not ``secret_key``'s public key, or the
            event text cannot be serialized.
    """
    if unsigned.pubkey != secret_key.public_key.hex():
        raise LocalProtocolError("event pubkey is not the public key of the signing key")
    event_id = compute_id(unsigned)
    sig = secret_key.sign(bytes.fromhex(event_id), aux)
    return Event(
        id=event_id,
        pubkey=unsigned.pubkey,
        created_at=unsigned.created_at,
        kind=unsigned.kind,
        tags=unsigned.tags,
        content=unsigned.content,
        sig=sig.hex(),
    )


def verify_event(event: Event, pubkey: PublicKey | None = None) -> None:
    """Check that the id is the hash of the fields and the signature is the pubkey's.

    ``pubkey`` may be given as an already parsed ``event.pubkey`` (a cached key verifies
    faster); it must be that key.

    Raises:
        SignatureError: "event id does not match its content" or "bad event signature".
    """
    try:
        digest = hashlib.sha256(serialize_for_id(event)).digest()
    except LocalProtocolError:
        raise SignatureError("event id does not match its content") from None
    if digest.hex() != event.id:
        raise SignatureError("event id does not match its content")
    try:  # an Event built in code skips the hex checks that decode_event makes
        if pubkey is None:
            pubkey = PublicKey.from_hex(event.pubkey)
        elif pubkey.hex() != event.pubkey:
            raise SignatureError("bad event signature")
        sig = bytes.fromhex(event.sig)
    except (KeyFormatError, ValueError):
        raise SignatureError("bad event signature") from None
    if not pubkey.verify(sig, digest):
        raise SignatureError("bad event signature")


_EVENT_DECODER: Final = msgspec.json.Decoder(Event)


def _is_lower_hex(text: str, size: int) -> bool:
    # bytes.fromhex tolerates upper case and whitespace; the round trip does not.
    try:
        return len(text) == 2 * size and bytes.fromhex(text).hex() == text
    except ValueError:
        return False


def decode_event(data: bytes, max_size: int) -> Event:
    """Parse untrusted JSON into an (unverified) ``Event``; at most ``max_size`` bytes.

    Raises:
        RemoteProtocolError: oversized, not JSON/UTF-8, missing or mistyped fields, or hex
            fields of the wrong length or case.
    """
    if len(data) > max_size:
        raise RemoteProtocolError(f"event is {len(data)} bytes, over the {max_size}-byte limit")
    try:
        event = _EVENT_DECODER.decode(data)
    except _DECODE_ERRORS as exc:
        raise RemoteProtocolError(f"malformed event: {exc}") from None
    if not (
        _is_lower_hex(event.id, 32) and _is_lower_hex(event.pubkey, 32)
        and _is_lower_hex(event.sig, 64)
    ):
        raise RemoteProtocolError("malformed event: id, pubkey or sig is not lower-case hex")
    return event


def encode_event(event: Event) -> bytes:
    """Return the event as compact UTF-8 JSON, as relays and gossipsub carry it.

    Raises:
        LocalProtocolError: a string holds a lone surrogate.
    """
    try:
        return _ENCODER.encode(event)
    except UnicodeEncodeError:
        raise LocalProtocolError("event text is not valid Unicode (lone surrogate)") from None


def tag_values(event: UnsignedEvent | Event, name: str) -> list[str]:
    """Return the first value of every tag called ``name``, in order (``["d", v]`` → v).

    Raises:
        Nothing: tags with no value are skipped.
    """
    return [tag[1] for tag in event.tags if len(tag) >= 2 and tag[0] == name]
