"""NIP-19 entities beyond bare keys: ``note`` ids and the TLV forms nprofile, nevent, naddr.

Owns: bech32 encoding and decoding of event ids (``note1…``) and of the shareable pointers
that carry relay hints (``specs/keys.md`` §2). Bare ``npub``/``nsec`` stay in ``keys``.

TLV layout (NIP-19): a sequence of ``[type u8][length u8][value]``; type 0 is the special
value (pubkey / event id / identifier), 1 a relay URL (repeatable, order kept), 2 the author
pubkey (32 bytes), 3 the kind (u32 big-endian). Decoders ignore unknown types; encoders emit
types in ``tlv_order`` (default 0, 1, 2, 3), which only changes the string, never the data.

Invariants: every ``decode_*`` raises nothing but ``KeyFormatError`` for any string: bad
checksum or prefix, truncated TLV, a value of the wrong length, a missing or repeated
singular field, or relay text that is not UTF-8. Strings are at most 5000 characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import bech32

from infernet.protocol.keys import KeyFormatError, PublicKey

__all__ = [
    "AddressPointer",
    "EventPointer",
    "Profile",
    "decode_bech32",
    "decode_naddr",
    "decode_nevent",
    "decode_note",
    "decode_nprofile",
    "encode_naddr",
    "encode_nevent",
    "encode_note",
    "encode_nprofile",
]

_MAX_BECH32_LEN: Final = 5000
_SPECIAL, _RELAY, _AUTHOR, _KIND = 0, 1, 2, 3
_DEFAULT_ORDER: Final = (_SPECIAL, _RELAY, _AUTHOR, _KIND)


@dataclass(frozen=True, slots=True)
class Profile:
    """``nprofile``: a public key and relays where its events are likely found."""

    pubkey: PublicKey
    relays: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EventPointer:
    """``nevent``: an event id (hex) with optional relays, author and kind."""

    id: str
    relays: tuple[str, ...] = ()
    author: PublicKey | None = None
    kind: int | None = None


@dataclass(frozen=True, slots=True)
class AddressPointer:
    """``naddr``: a replaceable event's address (identifier ``d`` tag, author, kind)."""

    identifier: str
    pubkey: PublicKey
    kind: int
    relays: tuple[str, ...] = ()


# --- bech32 --------------------------------------------------------------------------------


def _encode(hrp: str, data: bytes) -> str:
    words = bech32.convertbits(data, 8, 5, True)
    if words is None:  # unreachable for bytes input; convertbits is typed Optional
        raise KeyFormatError("bech32 conversion failed")
    text = bech32.bech32_encode(hrp, words)
    if len(text) > _MAX_BECH32_LEN:
        raise KeyFormatError(f"{hrp} would be over {_MAX_BECH32_LEN} characters")
    return text


def _decode(hrp: str, text: str) -> bytes:
    try:
        got_hrp, data = decode_bech32(text)
    except KeyFormatError as exc:
        raise KeyFormatError(f"not a valid {hrp}: {exc}") from None
    if got_hrp != hrp:
        raise KeyFormatError(f"expected a {hrp}, got a {got_hrp}")
    return data


def decode_bech32(text: str) -> tuple[str, bytes]:
    """Decode any Bech32 string (BIP-173 checksum, not Bech32m) into its HRP and bytes.

    The 5-to-8-bit conversion refuses more than 4 padding bits and non-zero padding, as
    NIP-19 requires.

    Raises:
        KeyFormatError: bad characters, mixed case, no separator, empty HRP, bad checksum
            (a Bech32m string included), bad padding, or over 5000 characters.
    """
    if not isinstance(text, str) or len(text) > _MAX_BECH32_LEN:
        raise KeyFormatError("not a valid bech32 string")
    hrp, words = bech32.bech32_decode(text)
    if hrp is None or words is None:
        raise KeyFormatError("not a valid bech32 string (bad character or checksum)")
    data = bech32.convertbits(words, 5, 8, False)
    if data is None:
        raise KeyFormatError("bech32 string has invalid padding")
    return hrp, bytes(data)


def _hex_id(value: str | bytes, what: str) -> bytes:
    if isinstance(value, bytes):
        raw = value
    else:
        try:
            raw = bytes.fromhex(value) if len(value) == 64 else b""
        except ValueError:
            raw = b""
    if len(raw) != 32:
        raise KeyFormatError(f"{what} must be 32 bytes (64 hex characters)")
    return raw


def encode_note(event_id: str | bytes) -> str:
    """Return the ``note1…`` form of an event id (hex or 32 bytes).

    Raises:
        KeyFormatError: not 32 bytes / 64 hex characters.
    """
    return _encode("note", _hex_id(event_id, "event id"))


def decode_note(text: str) -> str:
    """Return the lower-case hex event id inside a ``note1…`` string.

    Raises:
        KeyFormatError: bad checksum or characters, another prefix, or not 32 bytes.
    """
    data = _decode("note", text)
    if len(data) != 32:
        raise KeyFormatError("a note holds exactly 32 bytes")
    return data.hex()


# --- TLV -----------------------------------------------------------------------------------


def _tlv_entries(data: bytes, hrp: str) -> list[tuple[int, bytes]]:
    entries: list[tuple[int, bytes]] = []
    pos = 0
    while pos < len(data):
        if pos + 2 > len(data):
            raise KeyFormatError(f"{hrp} TLV is truncated")
        kind, length = data[pos], data[pos + 1]
        value = data[pos + 2 : pos + 2 + length]
        if len(value) != length:
            raise KeyFormatError(f"{hrp} TLV value is shorter than its length")
        entries.append((kind, value))
        pos += 2 + length
    return entries


@dataclass(frozen=True, slots=True)
class _Fields:
    special: bytes
    relays: tuple[str, ...]
    author: bytes | None
    kind: int | None


def _parse_tlv(hrp: str, text: str) -> _Fields:
    singles: dict[int, bytes] = {}
    relays: list[str] = []
    for kind, value in _tlv_entries(_decode(hrp, text), hrp):
        if kind == _RELAY:
            try:
                relays.append(value.decode("utf-8"))
            except UnicodeDecodeError:
                raise KeyFormatError(f"{hrp} relay is not UTF-8") from None
        elif kind in (_SPECIAL, _AUTHOR, _KIND):
            if kind in singles:
                raise KeyFormatError(f"{hrp} repeats TLV type {kind}")
            singles[kind] = value
        # other types: ignored, as NIP-19 asks
    if _SPECIAL not in singles:
        raise KeyFormatError(f"{hrp} has no TLV type 0")
    author, kind_bytes = singles.get(_AUTHOR), singles.get(_KIND)
    if author is not None and len(author) != 32:
        raise KeyFormatError(f"{hrp} author must be 32 bytes")
    if kind_bytes is not None and len(kind_bytes) != 4:
        raise KeyFormatError(f"{hrp} kind must be 4 bytes")
    kind_value = None if kind_bytes is None else int.from_bytes(kind_bytes, "big")
    return _Fields(singles[_SPECIAL], tuple(relays), author, kind_value)


def _tlv(kind: int, value: bytes) -> bytes:
    if len(value) > 255:
        raise KeyFormatError(f"TLV value of type {kind} is over 255 bytes")
    return bytes([kind, len(value)]) + value


def _build(hrp: str, parts: dict[int, list[bytes]], order: Sequence[int]) -> str:
    if sorted(order) != sorted(_DEFAULT_ORDER):
        raise KeyFormatError("tlv_order must name each of the types 0, 1, 2, 3 once")
    data = b"".join(_tlv(kind, value) for kind in order for value in parts.get(kind, []))
    return _encode(hrp, data)


def _relay_values(relays: Sequence[str]) -> list[bytes]:
    try:
        return [relay.encode("utf-8") for relay in relays]
    except UnicodeEncodeError:
        raise KeyFormatError("relay URL is not valid Unicode") from None


def _pubkey(data: bytes, hrp: str) -> PublicKey:
    if len(data) != 32:
        raise KeyFormatError(f"{hrp} pubkey must be 32 bytes")
    return PublicKey(data)


def encode_nprofile(profile: Profile, *, tlv_order: Sequence[int] = _DEFAULT_ORDER) -> str:
    """Return the ``nprofile1…`` form of a profile pointer.

    Raises:
        KeyFormatError: a relay over 255 bytes, or the string would exceed 5000 characters.
    """
    parts = {_SPECIAL: [bytes(profile.pubkey)], _RELAY: _relay_values(profile.relays)}
    return _build("nprofile", parts, tlv_order)


def decode_nprofile(text: str) -> Profile:
    """Parse an ``nprofile1…`` string.

    Raises:
        KeyFormatError: see the module invariants.
    """
    fields = _parse_tlv("nprofile", text)
    return Profile(pubkey=_pubkey(fields.special, "nprofile"), relays=fields.relays)


def encode_nevent(pointer: EventPointer, *, tlv_order: Sequence[int] = _DEFAULT_ORDER) -> str:
    """Return the ``nevent1…`` form of an event pointer.

    Raises:
        KeyFormatError: a bad id, a kind outside u32, a relay over 255 bytes, or too long.
    """
    parts = {_SPECIAL: [_hex_id(pointer.id, "event id")], _RELAY: _relay_values(pointer.relays)}
    if pointer.author is not None:
        parts[_AUTHOR] = [bytes(pointer.author)]
    if pointer.kind is not None:
        parts[_KIND] = [_kind_bytes(pointer.kind)]
    return _build("nevent", parts, tlv_order)


def decode_nevent(text: str) -> EventPointer:
    """Parse an ``nevent1…`` string.

    Raises:
        KeyFormatError: see the module invariants.
    """
    fields = _parse_tlv("nevent", text)
    if len(fields.special) != 32:
        raise KeyFormatError("nevent id must be 32 bytes")
    author = None if fields.author is None else PublicKey(fields.author)
    return EventPointer(id=fields.special.hex(), relays=fields.relays, author=author,
                        kind=fields.kind)


def _kind_bytes(kind: int) -> bytes:
    if not 0 <= kind <= 0xFFFFFFFF:
        raise KeyFormatError("kind must fit in 32 bits")
    return kind.to_bytes(4, "big")


def encode_naddr(pointer: AddressPointer, *, tlv_order: Sequence[int] = _DEFAULT_ORDER) -> str:
    """Return the ``naddr1…`` form of an address pointer.

    Raises:
        KeyFormatError: an identifier or relay over 255 bytes, a kind outside u32, or too long.
    """
    parts = {
        _SPECIAL: _relay_values([pointer.identifier]),
        _RELAY: _relay_values(pointer.relays),
        _AUTHOR: [bytes(pointer.pubkey)],
        _KIND: [_kind_bytes(pointer.kind)],
    }
    return _build("naddr", parts, tlv_order)


def decode_naddr(text: str) -> AddressPointer:
    """Parse an ``naddr1…`` string.

    Raises:
        KeyFormatError: see the module invariants, or a missing author or kind.
    """
    fields = _parse_tlv("naddr", text)
    if fields.author is None or fields.kind is None:
        raise KeyFormatError("naddr needs an author and a kind")
    try:
        identifier = fields.special.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError("naddr identifier is not UTF-8") from None
    return AddressPointer(identifier=identifier, pubkey=PublicKey(fields.author),
                          kind=fields.kind, relays=fields.relays)
