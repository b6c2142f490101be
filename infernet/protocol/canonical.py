"""Canonical CBOR records: the exact bytes that receipts, delegations and owner commands sign.

Owns: the one deterministic encoding of every signed Infernet record (``specs/receipts.md`` §2,
``specs/keys.md`` §3), canonical decimal strings for money, and signing/verifying a record's
digest with BIP-340.

Encoding rules (a second implementation needs exactly these):

- A record is a CBOR map with text keys: its ``type`` tag (e.g. ``"infernet/cpr/1"``) and
  every field, defaults included. Values are text strings, unsigned integers, or arrays of
  text strings; no floats, no CBOR tags, no indefinite lengths, no nulls.
- Canonical form is RFC 7049 §3.9 "canonical CBOR" as cbor2 6.3.0 writes it with
  ``canonical=True``: shortest integer/length heads and map keys sorted by encoded length,
  then bytewise.
- Decimal amounts are text: plain notation, no exponent, no sign, no leading zeros, no
  trailing fractional zeros, at most 18 fractional digits (``"0"``, ``"12.5"``,
  ``"0.00000625"``).
- The record digest is SHA-256 of those bytes; a signature is BIP-340 over the digest.

Invariants: ``decode_record`` accepts only bytes that are *exactly* ``encode_record`` of the
value they decode to, so every record has one encoding and one digest; it raises nothing but
``RemoteProtocolError``, whatever bytes it is given.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Final, TypeVar

import cbor2
import msgspec

from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError, SignatureError
from infernet.protocol.keys import KeyFormatError, PublicKey, SecretKey

__all__ = [
    "MAX_DECIMAL_PLACES",
    "MAX_RECORD_SIZE",
    "decode_record",
    "encode_record",
    "encode_valid_record",
    "format_decimal",
    "record_digest",
    "sign_digest",
    "verify_digest",
]

MAX_DECIMAL_PLACES: Final = 18
MAX_RECORD_SIZE: Final = 8192  # a record is a few hundred bytes; refuse anything bigger
_MAX_DECIMAL: Final = Decimal(10) ** 15  # far above any one job or balance

R = TypeVar("R", bound=msgspec.Struct)

# cbor2 reports every malformation as CBORError; the rest guard against surprises in a
# foreign decoder fed hostile bytes (a decoder edge must raise only our errors).
_CBOR_ERRORS: Final = (cbor2.CBORError, ValueError, TypeError, OverflowError, RecursionError)


def format_decimal(value: Decimal) -> str:
    """Return the canonical text of a non-negative amount (``Decimal("1.50")`` → ``"1.5"``).

    Raises:
        LocalProtocolError: NaN, infinite, negative (including -0), above 10**15, or more
            than 18 fractional digits.
    """
    if not isinstance(value, Decimal) or not value.is_finite() or value.is_signed():
        raise LocalProtocolError(f"amount {value!r} is not a finite non-negative Decimal")
    if value > _MAX_DECIMAL:
        raise LocalProtocolError(f"amount {value} is out of range")
    normal = value.normalize()
    exponent = normal.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMAL_PLACES:
        raise LocalProtocolError(f"amount {value} has more than {MAX_DECIMAL_PLACES} decimals")
    return "0" if normal == 0 else format(normal, "f")


def _plain(value: object) -> object:
    if type(value) is str or type(value) is int:  # most fields: skip the checks below
        return value
    if isinstance(value, Decimal):
        return format_decimal(value)
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, float):  # floats have no canonical text here; never sign one
        raise LocalProtocolError("signed records carry no floats")
    return value


def encode_record(record: msgspec.Struct) -> bytes:
    """Return the canonical CBOR bytes of a record Struct (its tag included).

    Raises:
        LocalProtocolError: a field holds a float or an amount ``format_decimal`` refuses.
    """
    builtins = msgspec.to_builtins(record, builtin_types=(Decimal,))
    try:
        return cbor2.dumps(_plain(builtins), canonical=True)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as exc:
        raise LocalProtocolError(f"record cannot be encoded: {exc}") from None


def encode_valid_record(record: msgspec.Struct, *, max_size: int = MAX_RECORD_SIZE) -> bytes:
    """Encode ``record`` and check it against its own bounds, as a receiver would.

    Raises:
        LocalProtocolError: a bound is broken (receivers would drop the record).
    """
    data = encode_record(record)
    try:  # the bounds live in the type and are checked only on decode: round-trip
        decode_record(data, type(record), max_size=max_size)
    except RemoteProtocolError as exc:
        raise LocalProtocolError(f"refusing to sign: {exc}") from None
    return data


def decode_record(data: bytes, record_type: type[R], *, max_size: int = MAX_RECORD_SIZE) -> R:
    """Parse canonical CBOR into ``record_type``; anything but its exact encoding is refused.

    Raises:
        RemoteProtocolError: oversized, not CBOR, wrong shape or type tag, a bound broken,
            or not the canonical encoding (e.g. ``"1.50"`` for 1.5, unsorted keys).
    """
    if not isinstance(data, bytes) or len(data) > max_size:
        raise RemoteProtocolError(f"record is over the {max_size}-byte limit")
    try:
        raw = cbor2.loads(data)
    except _CBOR_ERRORS as exc:
        raise RemoteProtocolError(f"record is not CBOR: {exc}") from None
    try:
        record = msgspec.convert(raw, record_type)
    except (msgspec.MsgspecError, ValueError, TypeError) as exc:
        raise RemoteProtocolError(f"malformed {record_type.__name__}: {exc}") from None
    try:
        canonical = encode_record(record)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(f"malformed {record_type.__name__}: {exc}") from None
    if canonical != data:
        raise RemoteProtocolError(f"{record_type.__name__} is not in canonical form")
    return record


def record_digest(encoded: bytes) -> bytes:
    """Return SHA-256 of a record's canonical bytes: what its signer signs.

    Raises:
        Nothing.
    """
    return hashlib.sha256(encoded).digest()


def sign_digest(digest: bytes, key: SecretKey, aux: bytes | None = None) -> str:
    """Return the lower-case hex BIP-340 signature of a 32-byte digest.

    Raises:
        LocalProtocolError: ``digest`` or ``aux`` is not 32 bytes.
    """
    return key.sign(digest, aux).hex()


def verify_digest(digest: bytes, signer_hex: str, sig_hex: str, what: str) -> PublicKey:
    """Check ``sig_hex`` over ``digest`` by the key ``signer_hex``; return that key.

    Raises:
        SignatureError: ``"bad <what> signature"`` — malformed key or signature included.
    """
    try:
        signer = PublicKey.from_hex(signer_hex)
        sig = bytes.fromhex(sig_hex)
    except (KeyFormatError, ValueError):
        raise SignatureError(f"bad {what} signature") from None
    if not signer.verify(sig, digest):
        raise SignatureError(f"bad {what} signature")
    return signer
