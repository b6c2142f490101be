"""NIP-44 version 2 encrypted payloads (secp256k1 ECDH, HKDF, ChaCha20, HMAC-SHA256, base64).

Owns: conversation keys, per-message keys, the padding scheme and the payload format of
NIP-44 v2 as the *current* NIP-44 text defines it, including the extended length prefix:
plaintexts of 1..65535 bytes carry a 2-byte big-endian length, plaintexts of 65536..2**32-1
bytes carry ``00 00`` then a 4-byte big-endian length (nostr-protocol/nips commit 733a047).
Used by ``e2e`` to seal job requests and token chunks (``specs/job-protocol.md`` §8).

Invariants:

- ``conversation_key(a, B) == conversation_key(b, A)``; the ECDH output is the *unhashed*
  32-byte x coordinate of the shared point (libsecp256k1's default ECDH hashes it, so this
  module multiplies the point itself).
- Nonces are arguments: 32 bytes from a CSPRNG, never reused with one conversation key.
- ``decrypt`` raises nothing but ``Nip44Error``, whatever string it is given: the version,
  the base64 (which must be canonical, so one payload has one spelling), the sizes, the MAC
  (checked in constant time *before* decrypting) and the padding are all checked.
- Payloads are only as private as their length: padding hides the exact size, not the scale.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from dataclasses import dataclass
from typing import Final

import coincurve
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from infernet.protocol.errors import ErrorCode, InfernetError
from infernet.protocol.keys import PublicKey, SecretKey

__all__ = [
    "MAX_PLAINTEXT",
    "MIN_PLAINTEXT",
    "VERSION",
    "MessageKeys",
    "Nip44Error",
    "calc_padded_len",
    "conversation_key",
    "decrypt",
    "decrypt_bytes",
    "encrypt",
    "encrypt_bytes",
    "message_keys",
    "pad",
    "unpad",
]

VERSION: Final = 2
MIN_PLAINTEXT: Final = 1
MAX_PLAINTEXT: Final = 0xFFFFFFFF  # current NIP-44; the vector file still says 65535
_SHORT_MAX: Final = 0xFFFF  # longest plaintext with the 2-byte prefix
_SALT: Final = b"nip44-v2"
_MIN_PAYLOAD_CHARS: Final = 132  # base64 of the smallest payload (99 bytes)
_MIN_PAYLOAD_BYTES: Final = 99  # version 1 + nonce 32 + prefix 2 + padded 32 + mac 32
_OVERHEAD: Final = 65  # version 1 + nonce 32 + mac 32


class Nip44Error(InfernetError):
    """Raised when a NIP-44 payload or key is invalid: bad version, size, base64, MAC or padding.

    The payload is corrupt, forged, or for another key: drop it; never act on its content.
    """

    code: ErrorCode = "bad_request"


@dataclass(frozen=True, slots=True)
class MessageKeys:
    """The three per-message keys HKDF-expand derives from a conversation key and a nonce."""

    chacha_key: bytes
    chacha_nonce: bytes
    hmac_key: bytes

    def __repr__(self) -> str:
        return "MessageKeys(<redacted>)"


def conversation_key(secret: SecretKey, public: PublicKey) -> bytes:
    """Return the 32-byte conversation key between ``secret`` and ``public`` (symmetric).

    Raises:
        Nip44Error: ``public`` is not the x coordinate of a curve point.
    """
    try:
        point = coincurve.PublicKey(b"\x02" + bytes(public))
    except ValueError:
        raise Nip44Error("public key is not a valid secp256k1 point") from None
    shared_x = point.multiply(secret.secret_bytes()).format(compressed=True)[1:]
    return hmac.digest(_SALT, shared_x, "sha256")  # HKDF-extract(salt, IKM)


def message_keys(conversation_key: bytes, nonce: bytes) -> MessageKeys:
    """Derive (chacha key, chacha nonce, hmac key) with HKDF-expand(conversation_key, nonce, 76).

    Raises:
        Nip44Error: the conversation key or the nonce is not 32 bytes.
    """
    if len(conversation_key) != 32:
        raise Nip44Error("conversation key must be 32 bytes")
    if len(nonce) != 32:
        raise Nip44Error("nonce must be 32 bytes")
    t1 = hmac.digest(conversation_key, nonce + b"\x01", "sha256")
    t2 = hmac.digest(conversation_key, t1 + nonce + b"\x02", "sha256")
    t3 = hmac.digest(conversation_key, t2 + nonce + b"\x03", "sha256")
    okm = t1 + t2 + t3
    return MessageKeys(chacha_key=okm[0:32], chacha_nonce=okm[32:44], hmac_key=okm[44:76])


def calc_padded_len(unpadded_len: int) -> int:
    """Return the padded size for a plaintext length (32 minimum, then power-of-two chunks).

    Raises:
        Nip44Error: ``unpadded_len`` is below 1.
    """
    if unpadded_len < 1:
        raise Nip44Error("plaintext length must be at least 1")
    if unpadded_len <= 32:
        return 32
    next_power = 1 << (unpadded_len - 1).bit_length()
    chunk = 32 if next_power <= 256 else next_power // 8
    return chunk * ((unpadded_len - 1) // chunk + 1)


def _prefix(length: int) -> bytes:
    if length <= _SHORT_MAX:
        return length.to_bytes(2, "big")
    return b"\x00\x00" + length.to_bytes(4, "big")


def pad(plaintext: bytes) -> bytes:
    """Return ``prefix ‖ plaintext ‖ zeros`` (2-byte prefix below 65536 bytes, else 6-byte).

    Raises:
        Nip44Error: the plaintext is empty or longer than 2**32 - 1 bytes.
    """
    length = len(plaintext)
    if not MIN_PLAINTEXT <= length <= MAX_PLAINTEXT:
        raise Nip44Error(f"invalid plaintext length {length}")
    return _prefix(length) + plaintext + bytes(calc_padded_len(length) - length)


def unpad(padded: bytes) -> bytes:
    """Return the plaintext inside a padded buffer.

    Raises:
        Nip44Error: "invalid padding" — a zero or non-canonical length, or a buffer whose
            size is not the one the length implies.
    """
    length, offset = int.from_bytes(padded[0:2], "big"), 2
    if length == 0 and len(padded) >= 6:  # extended form: 00 00 then a u32
        length, offset = int.from_bytes(padded[2:6], "big"), 6
        if length <= _SHORT_MAX:  # an encoder never spells a short length this way
            raise Nip44Error("invalid padding")
    plaintext = padded[offset : offset + length]
    if (
        length == 0
        or len(plaintext) != length
        or len(padded) != offset + calc_padded_len(length)
    ):
        raise Nip44Error("invalid padding")
    return plaintext


def _chacha20(keys: MessageKeys, data: bytes) -> bytes:
    # RFC 8439 ChaCha20 with the block counter starting at 0; `cryptography` takes a 16-byte
    # nonce whose first 4 bytes are that counter (little-endian).
    algorithm = algorithms.ChaCha20(keys.chacha_key, b"\x00\x00\x00\x00" + keys.chacha_nonce)
    return Cipher(algorithm, mode=None).encryptor().update(data)


def _mac(keys: MessageKeys, nonce: bytes, ciphertext: bytes) -> bytes:
    return hmac.digest(keys.hmac_key, nonce + ciphertext, "sha256")  # AAD = the nonce


def encrypt_bytes(plaintext: bytes, conversation_key: bytes, nonce: bytes) -> str:
    """Encrypt raw bytes into a base64 NIP-44 v2 payload.

    Raises:
        Nip44Error: empty or over-long plaintext, or a key or nonce that is not 32 bytes.
    """
    keys = message_keys(conversation_key, nonce)
    ciphertext = _chacha20(keys, pad(plaintext))
    raw = bytes([VERSION]) + nonce + ciphertext + _mac(keys, nonce, ciphertext)
    return base64.b64encode(raw).decode("ascii")


def encrypt(plaintext: str, conversation_key: bytes, nonce: bytes) -> str:
    """Encrypt a string (UTF-8) into a base64 NIP-44 v2 payload.

    Raises:
        Nip44Error: as ``encrypt_bytes``, or the text holds a lone surrogate.
    """
    try:
        data = plaintext.encode("utf-8")
    except UnicodeEncodeError:
        raise Nip44Error("plaintext is not valid Unicode") from None
    return encrypt_bytes(data, conversation_key, nonce)


def _max_payload_chars(max_plaintext: int) -> int:
    raw = _OVERHEAD + len(_prefix(max_plaintext)) + calc_padded_len(max_plaintext)
    return 4 * ((raw + 2) // 3)


def _decode_payload(payload: str, max_plaintext: int) -> tuple[bytes, bytes, bytes]:
    if not isinstance(payload, str) or not payload or payload[0] == "#":
        raise Nip44Error("unknown encryption version")
    if not _MIN_PAYLOAD_CHARS <= len(payload) <= _max_payload_chars(max_plaintext):
        raise Nip44Error(f"invalid payload size {len(payload)}")
    try:
        encoded = payload.encode("ascii")
        raw = binascii.a2b_base64(encoded, strict_mode=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        raise Nip44Error("invalid base64") from None
    # Strict mode still ignores the unused low bits of the last character and accepts
    # padding after a full group; only the canonical spelling counts, so a payload cannot
    # be altered without the MAC noticing. Full groups are 1:1, so checking the last one
    # (instead of re-encoding everything) suffices.
    tail = len(raw) % 3 or 3
    if len(encoded) % 4 or binascii.b2a_base64(raw[-tail:], newline=False) != encoded[-4:]:
        raise Nip44Error("invalid base64 (non-canonical)")
    if len(raw) < _MIN_PAYLOAD_BYTES:
        raise Nip44Error(f"invalid data size {len(raw)}")
    if raw[0] != VERSION:
        raise Nip44Error(f"unknown encryption version {raw[0]}")
    return raw[1:33], raw[33:-32], raw[-32:]


def decrypt_bytes(
    payload: str, conversation_key: bytes, *, max_plaintext: int = MAX_PLAINTEXT
) -> bytes:
    """Decrypt a base64 NIP-44 v2 payload into raw bytes.

    ``max_plaintext`` lowers the accepted size before anything is decoded (DoS bound).

    Raises:
        Nip44Error: unknown version, invalid size or base64, invalid MAC or invalid padding.
    """
    nonce, ciphertext, mac = _decode_payload(payload, max_plaintext)
    keys = message_keys(conversation_key, nonce)
    if not hmac.compare_digest(_mac(keys, nonce, ciphertext), mac):
        raise Nip44Error("invalid MAC")
    return unpad(_chacha20(keys, ciphertext))


def decrypt(payload: str, conversation_key: bytes, *, max_plaintext: int = MAX_PLAINTEXT) -> str:
    """Decrypt a base64 NIP-44 v2 payload into a string.

    Raises:
        Nip44Error: as ``decrypt_bytes``, or the plaintext is not UTF-8.
    """
    data = decrypt_bytes(payload, conversation_key, max_plaintext=max_plaintext)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise Nip44Error("plaintext is not UTF-8") from None

