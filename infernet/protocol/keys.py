"""Node identity: secp256k1 keys, BIP-340 signatures, NIP-19 npub/nsec, libp2p peer IDs.

Owns: ``SecretKey`` and ``PublicKey`` (DESIGN.md §3 "Identity and signatures"), BIP-340
Schnorr signing and verification, the NIP-19 bare-key bech32 forms ``npub1…``/``nsec1…``,
and the pure mapping between a Nostr x-only key and a libp2p secp256k1 peer ID
(libp2p/specs ``peer-ids/peer-ids.md``). The other NIP-19 forms (``note``, ``nprofile``,
``nevent``, ``naddr``) live in ``nip19``; ``specs/keys.md`` describes all of them.

Invariants:

- A ``SecretKey`` always holds a valid scalar (1 ≤ k < n); its repr never shows it.
- A ``PublicKey`` is exactly 32 bytes (BIP-340 x-only). It is *not* guaranteed to be a point
  on the curve: a peer may send any 32 bytes, so ``verify`` returns False for such a key
  instead of raising.
- ``PublicKey.verify`` never raises, whatever bytes it is given.
- A peer ID derived here is the identity multihash of the libp2p ``PublicKey`` protobuf
  (``KeyType = Secp256k1``, ``Data`` = 33-byte compressed key). An x-only key has no Y
  parity, so ``peer_id_bytes`` uses the even-Y point (prefix ``02``); give libp2p
  ``SecretKey.even_y()`` so that its own peer ID is that same one. Going the other way drops
  the parity, so a peer ID built from an odd-Y key still maps to the right x-only key.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from typing import Final, Literal

import base58
import bech32  # the BIP-173 reference implementation by Pieter Wuille (Bech32, not Bech32m)
import coincurve

from infernet.protocol.errors import (
    ErrorCode,
    InfernetError,
    LocalProtocolError,
    RemoteProtocolError,
)

__all__ = [
    "KeyFormatError",
    "PublicKey",
    "SecretKey",
    "decode_npub",
    "decode_nsec",
    "encode_npub",
    "encode_nsec",
    "peer_id_bytes",
    "peer_id_from_base58",
    "peer_id_to_base58",
    "public_key_from_peer_id_bytes",
]

# Order of the secp256k1 group.
_N: Final = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# NIP-19: bech32 strings SHOULD be at most 5000 characters; a bare key is 63.
_MAX_BECH32_LEN: Final = 5000
_MAX_PEER_ID_B58_LEN: Final = 128
_B58_ALPHABET: Final = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
# libp2p: multihash code 0x00 (identity), then the protobuf; KeyType Secp256k1 = 2.
_IDENTITY_MULTIHASH: Final = 0x00
_KEY_TYPE_SECP256K1: Final = 2


class KeyFormatError(InfernetError):
    """Raised when a key, npub/nsec or peer-ID string is malformed or out of range.

    The input came from a user or a config file: show the message and ask for a valid key.
    """

    code: ErrorCode = "bad_request"


def _hex32(text: str, what: str) -> bytes:
    if len(text) != 64:
        raise KeyFormatError(f"{what} must be 64 hex characters, got {len(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise KeyFormatError(f"{what} is not hex") from None


class PublicKey:
    """A BIP-340 x-only public key: 32 bytes, compared and hashed by value."""

    __slots__ = ("_data", "_point")

    def __init__(self, data: bytes) -> None:
        """Wrap 32 bytes.

        Raises:
            KeyFormatError: ``data`` is not 32 bytes.
        """
        if not isinstance(data, bytes) or len(data) != 32:
            raise KeyFormatError("an x-only public key is 32 bytes")
        self._data = data
        # The lifted curve point, parsed on first verify and kept: lifting x costs ~15 % of
        # a verification, and a node's key verifies its announcements every 30 s.
        self._point: coincurve.PublicKeyXOnly | Literal[False] | None = None

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        """Parse 64 hex characters (either case).

        Raises:
            KeyFormatError: not 64 hex characters.
        """
        return cls(_hex32(text, "public key"))

    def hex(self) -> str:
        """Return the lower-case hex form used in Nostr events."""
        return self._data.hex()

    def __bytes__(self) -> bytes:
        return self._data

    def verify(self, sig: bytes, msg: bytes) -> bool:
        """Return True iff ``sig`` is a valid BIP-340 signature of ``msg`` (any length).

        Raises:
            Nothing: a malformed key or signature is simply not valid.
        """
        if not isinstance(sig, bytes) or len(sig) != 64 or not isinstance(msg, bytes):
            return False
        point = self._point
        if point is None:
            try:
                point = coincurve.PublicKeyXOnly(self._data)
            except ValueError:  # not the x coordinate of a curve point
                point = False
            self._point = point
        if point is False:
            return False
        return bool(point.verify(sig, msg))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and self._data == other._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"PublicKey({self.hex()})"


class SecretKey:
    """A secp256k1 secret scalar; signs BIP-340. Its repr is ``SecretKey(<redacted>)``."""

    __slots__ = ("_data", "_public_key", "_signer")

    def __init__(self, data: bytes) -> None:
        """Wrap a 32-byte big-endian scalar.

        Raises:
            KeyFormatError: not 32 bytes, or zero, or not below the group order.
        """
        if not isinstance(data, bytes) or len(data) != 32:
            raise KeyFormatError("a secret key is 32 bytes")
        if not 0 < int.from_bytes(data, "big") < _N:
            raise KeyFormatError("secret key is out of range for secp256k1")
        self._data = data
        self._public_key = PublicKey(coincurve.PublicKeyXOnly.from_secret(data).format())
        # Building a coincurve key derives its public point (a scalar multiplication): a
        # node signs a receipt per job with the same key, so build it once, on first use
        # (ephemeral keys that never sign do not pay for it).
        self._signer: coincurve.PrivateKey | None = None

    @classmethod
    def generate(cls, randbytes: Callable[[int], bytes] = secrets.token_bytes) -> SecretKey:
        """Draw a fresh key from ``randbytes`` (a CSPRNG; ``secrets.token_bytes`` by default).

        Raises:
            InfernetError: ``randbytes`` gave no valid scalar in 16 tries (it is broken).
        """
        for _ in range(16):  # a uniform source fails with probability ~2**-128 per try
            candidate = randbytes(32)
            if len(candidate) == 32 and 0 < int.from_bytes(candidate, "big") < _N:
                return cls(candidate)
        raise InfernetError("random source produced no valid secret key", code="internal_error")

    @classmethod
    def from_hex(cls, text: str) -> SecretKey:
        """Parse 64 hex characters.

        Raises:
            KeyFormatError: not 64 hex characters, or out of range.
        """
        return cls(_hex32(text, "secret key"))

    def hex(self) -> str:
        """Return the secret as lower-case hex (for the key file; never log it)."""
        return self._data.hex()

    def secret_bytes(self) -> bytes:
        """Return the raw 32-byte secret (for the key file and for libp2p)."""
        return self._data

    @property
    def public_key(self) -> PublicKey:
        """The x-only public key."""
        return self._public_key

    def even_y(self) -> SecretKey:
        """Return the key whose point is (x, even y): same x-only key, same signatures.

        libp2p encodes the compressed point, parity included; a libp2p host built from this
        key has the peer ID ``peer_id_bytes(self.public_key)``.
        """
        compressed = coincurve.PrivateKey(self._data).public_key.format(compressed=True)
        if compressed[0] == 0x02:
            return self
        return SecretKey((_N - int.from_bytes(self._data, "big")).to_bytes(32, "big"))

    def sign(self, msg32: bytes, aux: bytes | None = None) -> bytes:
        """Sign a 32-byte digest with BIP-340; ``aux`` is 32 bytes or None for fresh randomness.

        Raises:
            LocalProtocolError: ``msg32`` or ``aux`` is not 32 bytes.
        """
        if len(msg32) != 32:
            raise LocalProtocolError("BIP-340 signing here takes a 32-byte digest")
        # coincurve reads b"" as "draw randomness" and None as "no aux at all" (which is not
        # the same as 32 zero bytes), so always hand it an explicit 32-byte value.
        aux_rand = secrets.token_bytes(32) if aux is None else aux
        if len(aux_rand) != 32:
            raise LocalProtocolError("BIP-340 aux randomness is 32 bytes")
        if self._signer is None:
            self._signer = coincurve.PrivateKey(self._data)
        return self._signer.sign_schnorr(msg32, aux_rand)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SecretKey) and hmac.compare_digest(self._data, other._data)

    def __hash__(self) -> int:
        return hash(self._public_key)

    def __repr__(self) -> str:
        return "SecretKey(<redacted>)"


# --- NIP-19 bare keys --------------------------------------------------------------------


def _encode_bare(hrp: str, data: bytes) -> str:
    words = bech32.convertbits(data, 8, 5, True)
    if words is None:  # unreachable for bytes input; convertbits is typed Optional
        raise LocalProtocolError("bech32 conversion failed")
    return bech32.bech32_encode(hrp, words)


def _decode_bare(hrp: str, text: str) -> bytes:
    if not isinstance(text, str) or len(text) > _MAX_BECH32_LEN:
        raise KeyFormatError(f"not a valid {hrp}")
    got_hrp, words = bech32.bech32_decode(text)
    if got_hrp is None or words is None:
        raise KeyFormatError(f"not a valid bech32 {hrp} (bad character or checksum)")
    if got_hrp != hrp:
        raise KeyFormatError(f"expected a {hrp}, got a {got_hrp}")
    data = bech32.convertbits(words, 5, 8, False)
    if data is None or len(data) != 32:
        raise KeyFormatError(f"a {hrp} holds exactly 32 bytes")
    return bytes(data)


def encode_npub(pub: PublicKey) -> str:
    """Return the NIP-19 ``npub1…`` form of a public key.

    Raises:
        Nothing.
    """
    return _encode_bare("npub", bytes(pub))


def decode_npub(text: str) -> PublicKey:
    """Parse an ``npub1…`` string.

    Raises:
        KeyFormatError: bad checksum or characters, another prefix, or not 32 bytes.
    """
    return PublicKey(_decode_bare("npub", text))


def encode_nsec(key: SecretKey) -> str:
    """Return the NIP-19 ``nsec1…`` form of a secret key (for export; never log it).

    Raises:
        Nothing.
    """
    return _encode_bare("nsec", key.secret_bytes())


def decode_nsec(text: str) -> SecretKey:
    """Parse an ``nsec1…`` string.

    Raises:
        KeyFormatError: bad checksum or characters, another prefix, not 32 bytes, or a
            scalar out of range.
    """
    return SecretKey(_decode_bare("nsec", text))


# --- libp2p peer IDs -----------------------------------------------------------------------


def peer_id_bytes(pub: PublicKey) -> bytes:
    """Return the libp2p peer ID (identity multihash) of the even-Y point with x = ``pub``.

    Raises:
        Nothing: no curve check; an off-curve key gives a peer ID no host can own.
    """
    proto = bytes([0x08, _KEY_TYPE_SECP256K1, 0x12, 33, 0x02]) + bytes(pub)
    return bytes([_IDENTITY_MULTIHASH, len(proto)]) + proto


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 63, 7):
        if pos >= len(buf):
            raise RemoteProtocolError("peer id is truncated")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise RemoteProtocolError("peer id has an over-long varint")


def public_key_from_peer_id_bytes(peer_id: bytes) -> PublicKey:
    """Return the x-only key inside a secp256k1 identity-multihash peer ID.

    Raises:
        RemoteProtocolError: not an identity multihash, not a secp256k1 key, or malformed.
    """
    code, pos = _read_varint(peer_id, 0)
    if code != _IDENTITY_MULTIHASH:
        raise RemoteProtocolError("peer id is a hash, not an inline secp256k1 key")
    length, pos = _read_varint(peer_id, pos)
    proto = peer_id[pos:]
    if length != len(proto):
        raise RemoteProtocolError("peer id multihash length does not match its body")
    # Deterministic encoding (peer-ids.md): field 1 (KeyType) then field 2 (Data), no others.
    if len(proto) < 2 or proto[0] != 0x08:
        raise RemoteProtocolError("peer id key protobuf does not start with its key type")
    key_type, pos = _read_varint(proto, 1)
    if key_type != _KEY_TYPE_SECP256K1:
        raise RemoteProtocolError(f"peer id key type {key_type} is not secp256k1")
    if proto[pos : pos + 2] != bytes([0x12, 33]) or len(proto) != pos + 2 + 33:
        raise RemoteProtocolError("peer id secp256k1 key is not a 33-byte compressed point")
    compressed = proto[pos + 2 :]
    try:
        coincurve.PublicKey(compressed)
    except ValueError:
        raise RemoteProtocolError("peer id secp256k1 key is not on the curve") from None
    return PublicKey(compressed[1:])  # x-only: the 02/03 parity byte is dropped


def peer_id_to_base58(peer_id: bytes) -> str:
    """Return the base58btc text form of a peer ID (``16Uiu2H…`` for secp256k1).

    Raises:
        Nothing.
    """
    return base58.b58encode(peer_id).decode("ascii")


def peer_id_from_base58(text: str) -> bytes:
    """Parse the base58btc text form of a peer ID into its multihash bytes.

    Raises:
        KeyFormatError: empty, too long, or not base58btc.
    """
    # base58.b58decode silently strips trailing whitespace; be strict instead.
    if not text or len(text) > _MAX_PEER_ID_B58_LEN or not set(text) <= _B58_ALPHABET:
        raise KeyFormatError("peer id is not a base58btc string")
    return base58.b58decode(text)
