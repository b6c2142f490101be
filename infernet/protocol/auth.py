"""``X-Infernet-Auth``: BIP-340-signed HTTP requests from nodes to the coordinator.

Owns: the header format ``v1.<sig>.<nonce>.<timestamp>``, the signed message, request
signing, and ``AuthVerifier`` with its ±30 s window and 5-minute nonce cache
(DESIGN.md §3 "Auth over HTTP"; ``specs/auth.md``).

Encodings (``specs/auth.md`` §2):

- ``sig``: 128 lower-case hex characters (64-byte BIP-340 signature);
- ``nonce``: 32 lower-case hex characters (16 random bytes), unique per request;
- ``timestamp``: unix seconds in decimal ASCII, no sign, no leading zeros, at most 12 digits;
- signed digest = SHA-256 of the UTF-8 text
  ``METHOD "\\n" target "\\n" sha256hex(body) "\\n" nonce "\\n" timestamp``, where ``target``
  is the request target as sent (path plus ``?query`` when there is one, percent-encoding
  untouched, no scheme/host/fragment) and an empty body hashes as ``sha256(b"")``.

Invariants: ``AuthVerifier.verify`` raises nothing but ``AuthError`` subclasses (all code
``unauthorized``, except ``AuthBusyError``: ``rate_limited``) for any header text; a nonce is
remembered only after its signature verified, so forged requests cannot fill the cache.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from infernet.protocol.errors import (
    ErrorCode,
    InfernetError,
    LocalProtocolError,
    SignatureError,
)
from infernet.protocol.keys import PublicKey, SecretKey
from infernet.protocol.replay import ReplayCache, ReplayCacheFull, ReplayStatistics

__all__ = [
    "AUTH_HEADER",
    "AUTH_VERSION",
    "DEFAULT_MAX_NONCES",
    "DEFAULT_NONCE_TTL_S",
    "DEFAULT_WINDOW_S",
    "PUBKEY_HEADER",
    "AuthBusyError",
    "AuthError",
    "AuthExpiredError",
    "AuthFutureError",
    "AuthHeader",
    "AuthMalformedError",
    "AuthReplayError",
    "AuthSignatureError",
    "AuthUnknownKeyError",
    "AuthVerifier",
    "auth_digest",
    "body_sha256",
    "parse_auth_header",
    "sign_request",
]

AUTH_HEADER: Final = "X-Infernet-Auth"
# Names the signing node where the route names none or names another key (``specs/auth.md``
# §3): e.g. a receipt upload whose receipt an earlier, rotated-away key of the node signed.
PUBKEY_HEADER: Final = "X-Infernet-Pubkey"
AUTH_VERSION: Final = "v1"
DEFAULT_WINDOW_S: Final = 30
DEFAULT_NONCE_TTL_S: Final = 300
DEFAULT_MAX_NONCES: Final = 100_000
NONCE_BYTES: Final = 16
_MAX_HEADER_LEN: Final = 3 + 128 + 1 + 32 + 1 + 12
_MAX_TARGET_LEN: Final = 8192

_SIG_RE: Final = re.compile(r"[0-9a-f]{128}")
_NONCE_RE: Final = re.compile(r"[0-9a-f]{32}")
_TIMESTAMP_RE: Final = re.compile(r"0|[1-9][0-9]{0,11}")
_METHOD_RE: Final = re.compile(r"[A-Z]{1,16}")
_TARGET_RE: Final = re.compile(r"/[\x21-\x7e]*")  # printable ASCII, no space, no newline


class AuthError(InfernetError):
    """Raised when a request's ``X-Infernet-Auth`` does not authenticate it: answer 401.

    Subclasses say why; the HTTP body should carry the message, never more detail.
    """

    code: ErrorCode = "unauthorized"


class AuthMalformedError(AuthError):
    """Raised when the header is missing, not ``v1.<sig>.<nonce>.<timestamp>``, or mis-encoded."""


class AuthExpiredError(AuthError):
    """Raised when the timestamp is more than the window (30 s) before ``now``: re-sign."""


class AuthFutureError(AuthError):
    """Raised when the timestamp is more than the window after ``now``: check the clock."""


class AuthReplayError(AuthError):
    """Raised when the nonce was already used by this key within the cache lifetime."""


class AuthSignatureError(AuthError, SignatureError):
    """Raised when the signature does not verify over this method, target, body and nonce."""


class AuthUnknownKeyError(AuthError):
    """Raised when the key lookup knows no public key for the request's key id: register."""


class AuthBusyError(AuthError):
    """Raised when the nonce cache is full of live nonces: answer 429 and let the node retry."""

    code: ErrorCode = "rate_limited"


@dataclass(frozen=True, slots=True)
class AuthHeader:
    """A parsed (not yet verified) ``X-Infernet-Auth`` value."""

    sig: bytes
    nonce: str
    timestamp: int

    def __str__(self) -> str:
        return f"{AUTH_VERSION}.{self.sig.hex()}.{self.nonce}.{self.timestamp}"


def body_sha256(body: bytes) -> str:
    """Return the lower-case hex SHA-256 of a request body (``b""`` included).

    Raises:
        Nothing.
    """
    return hashlib.sha256(body).hexdigest()


def _check_request(method: str, target: str, exc: type[InfernetError]) -> None:
    if not isinstance(method, str) or _METHOD_RE.fullmatch(method) is None:
        raise exc("HTTP method must be 1-16 upper-case letters")
    if (
        not isinstance(target, str)
        or len(target) > _MAX_TARGET_LEN
        or _TARGET_RE.fullmatch(target) is None
    ):
        raise exc("request target must be an origin-form path of printable ASCII")


def auth_digest(method: str, target: str, body: bytes, nonce: str, timestamp: int) -> bytes:
    """Return the 32-byte digest that ``X-Infernet-Auth`` signs.

    Raises:
        Nothing: callers validate the parts (``sign_request`` and ``AuthVerifier`` do).
    """
    text = f"{method}\n{target}\n{body_sha256(body)}\n{nonce}\n{timestamp}"
    return hashlib.sha256(text.encode("utf-8")).digest()


def sign_request(
    key: SecretKey,
    *,
    method: str,
    target: str,
    body: bytes,
    nonce: bytes,
    timestamp: int,
    aux: bytes | None = None,
) -> str:
    """Return the ``X-Infernet-Auth`` value for a request; ``nonce`` is 16 random bytes.

    Raises:
        LocalProtocolError: bad method or target, a nonce that is not 16 bytes, or a
            timestamp outside 0..999999999999.
    """
    _check_request(method, target, LocalProtocolError)
    if len(nonce) != NONCE_BYTES:
        raise LocalProtocolError("auth nonce must be 16 bytes")
    if not 0 <= timestamp <= 999_999_999_999:
        raise LocalProtocolError("auth timestamp out of range")
    sig = key.sign(auth_digest(method, target, body, nonce.hex(), timestamp), aux)
    return str(AuthHeader(sig=sig, nonce=nonce.hex(), timestamp=timestamp))


def parse_auth_header(value: str | None) -> AuthHeader:
    """Split and check the encoding of a header value (no signature check).

    Raises:
        AuthMalformedError: missing, over-long, wrong version, or a part mis-encoded.
    """
    if not isinstance(value, str) or not value:
        raise AuthMalformedError("missing X-Infernet-Auth header")
    if len(value) > _MAX_HEADER_LEN:
        raise AuthMalformedError("X-Infernet-Auth header is too long")
    parts = value.split(".")
    if len(parts) != 4:
        raise AuthMalformedError("X-Infernet-Auth must be v1.<sig>.<nonce>.<timestamp>")
    version, sig, nonce, timestamp = parts
    if version != AUTH_VERSION:
        raise AuthMalformedError(f"unsupported X-Infernet-Auth version {version[:8]!r}")
    if _SIG_RE.fullmatch(sig) is None:
        raise AuthMalformedError("auth signature must be 128 lower-case hex characters")
    if _NONCE_RE.fullmatch(nonce) is None:
        raise AuthMalformedError("auth nonce must be 32 lower-case hex characters")
    if _TIMESTAMP_RE.fullmatch(timestamp) is None:
        raise AuthMalformedError("auth timestamp must be unix seconds in decimal")
    return AuthHeader(sig=bytes.fromhex(sig), nonce=nonce, timestamp=int(timestamp))


class AuthVerifier:
    """Checks ``X-Infernet-Auth`` headers; one per coordinator process (it holds the nonces).

    ``lookup(key_id)`` returns the registered public key for the id the route names (e.g.
    the node's pubkey hex from the URL or body), or None if it knows none.
    """

    def __init__(
        self,
        lookup: Callable[[str], PublicKey | None],
        *,
        window_s: int = DEFAULT_WINDOW_S,
        nonce_ttl_s: int = DEFAULT_NONCE_TTL_S,
        max_nonces: int = DEFAULT_MAX_NONCES,
    ) -> None:
        """Create a verifier with an empty nonce cache.

        Raises:
            InfernetError: a window, lifetime or bound that is not positive.
        """
        self._lookup: Final = lookup
        self._window: Final = window_s
        self._nonces: Final = ReplayCache(ttl=nonce_ttl_s, max_entries=max_nonces)

    def verify(
        self,
        header: str | None,
        *,
        key_id: str,
        method: str,
        target: str,
        body: bytes,
        now: float,
    ) -> PublicKey:
        """Authenticate one request received at ``now``; return the signer's key.

        Raises:
            AuthMalformedError: missing or malformed header, or a bad method/target.
            AuthExpiredError: older than the window. AuthFutureError: newer than the window.
            AuthUnknownKeyError: ``lookup`` knows no key for ``key_id``.
            AuthReplayError: nonce already used by this key.
            AuthSignatureError: the signature does not verify.
            AuthBusyError: the nonce cache is full (fail closed; HTTP 429).
        """
        parsed = parse_auth_header(header)
        _check_request(method, target, AuthMalformedError)
        if parsed.timestamp < now - self._window:
            raise AuthExpiredError("X-Infernet-Auth timestamp is too old")
        if parsed.timestamp > now + self._window:
            raise AuthFutureError("X-Infernet-Auth timestamp is in the future")
        pubkey = self._lookup(key_id)
        if pubkey is None:
            raise AuthUnknownKeyError("no registered key for this node")
        replay_key = f"{pubkey.hex()}:{parsed.nonce}"
        if self._nonces.seen(replay_key, now):
            raise AuthReplayError("X-Infernet-Auth nonce was already used")
        digest = auth_digest(method, target, body, parsed.nonce, parsed.timestamp)
        if not pubkey.verify(parsed.sig, digest):
            raise AuthSignatureError("X-Infernet-Auth signature does not verify")
        try:
            self._nonces.add(replay_key, now=now, stale_at=parsed.timestamp + self._window)
        except ReplayCacheFull as exc:
            raise AuthBusyError(str(exc)) from None
        return pubkey

    def statistics(self) -> ReplayStatistics:
        """Return a snapshot of the nonce cache."""
        return self._nonces.statistics()
