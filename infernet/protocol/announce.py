"""Capability announcements: what a node serves, signed as a Nostr event.

Owns: the ``Capabilities`` record, its event layout and the receiver's checks
(DESIGN.md §3 "Announcements"; ``specs/announce.md``).

Event layout (a NIP-01 parameterized replaceable event, NIP-33/NIP-01 ``30000–39999``):

- ``kind`` = ``ANNOUNCE_KIND`` (30337); ``pubkey`` = the node's x-only key.
- ``tags``: ``["d", <pubkey hex>]`` (one live announcement per node, later replaces
  earlier), one ``["m", <model name>]`` per served model (so relays can filter by model),
  and ``["expiration", <expires_at>]`` (NIP-40).
- ``content`` = compact JSON of ``Capabilities``. Receivers ignore fields they do not know,
  and every field added later gets a default, so old and new nodes read each other.

Invariants a parsed ``Announcement`` satisfies:

- id and BIP-340 signature verify; the pubkey equals the sender's peer-ID key when given;
- ``created_at <= now + max_future_skew`` and ``now <= expires_at`` (expired only once
  ``now`` is past ``expires_at``);
- the ``d`` tag is the pubkey and the ``expiration`` tag equals ``caps.expires_at``;
- the protocol major version is 1; every value is within the bounds declared below;
  model names are unique and ``slots_free <= slots_total``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Final

import msgspec

from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError, SignatureError
from infernet.protocol.event import (
    Event,
    UnsignedEvent,
    decode_event,
    encode_event,
    sign_event,
    verify_event,
)
from infernet.protocol.keys import PublicKey, SecretKey

__all__ = [
    "ANNOUNCE_KIND",
    "DEFAULT_MAX_SIZE",
    "PROTOCOL_VERSION",
    "Announcement",
    "AnnouncementVerifier",
    "Capabilities",
    "ModelOffer",
    "build_announcement",
    "parse_announcement",
]

ANNOUNCE_KIND: Final = 30337
PROTOCOL_VERSION: Final = "1.0"
SUPPORTED_MAJOR: Final = 1
DEFAULT_MAX_SIZE: Final = 16384

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_Short = Annotated[str, msgspec.Meta(max_length=256)]
_Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
_Price = Annotated[float, msgspec.Meta(ge=0.0, le=1e9)]
_UnixTime = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class ModelOffer(msgspec.Struct, frozen=True, kw_only=True):
    """One served model; prices are per 1000 tokens, weights_hash names the exact weights."""

    name: _Name
    # Visible ASCII only: it travels on in HTTP headers (served-by provenance), where a
    # CR/LF would be refused after the job started.
    weights_hash: Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[!-~]*$")] = ""
    quantization: Annotated[str, msgspec.Meta(max_length=32)] = ""  # e.g. "Q4_K_M", "fp16"
    context_length: _Count = 0
    price_per_1k_input: _Price = 0.0
    price_per_1k_output: _Price = 0.0


class Capabilities(msgspec.Struct, frozen=True, kw_only=True):
    """The announcement content: what the node serves, its capacity and where to reach it."""

    protocol_version: Annotated[str, msgspec.Meta(max_length=16)] = PROTOCOL_VERSION
    backend: Annotated[str, msgspec.Meta(max_length=64)]
    models: Annotated[tuple[ModelOffer, ...], msgspec.Meta(max_length=64)] = ()
    vram_tier: Annotated[str, msgspec.Meta(max_length=32)] = "cpu"
    gpu: _Short = ""
    slots_total: _Count = 1
    slots_free: _Count = 1
    load: Annotated[float, msgspec.Meta(ge=0.0, le=1e6)] = 0.0
    draining: bool = False  # stopping: finishes its jobs, takes no new one
    listen_addrs: Annotated[tuple[_Short, ...], msgspec.Meta(max_length=16)] = ()
    expires_at: _UnixTime


_CAPS_DECODER: Final = msgspec.json.Decoder(Capabilities)


class Announcement(msgspec.Struct, frozen=True):
    """A verified announcement: the event as received, its parsed content and its signer.

    (A Struct rather than a frozen dataclass: it is built for every message received, and
    a frozen dataclass's ``__init__`` is several times slower.)
    """

    event: Event
    caps: Capabilities
    pubkey: PublicKey


def _inconsistency(caps: Capabilities) -> str | None:
    if len(caps.models) > 1 and len({offer.name for offer in caps.models}) != len(caps.models):
        return "a model name appears twice"
    if caps.slots_free > caps.slots_total:
        return "more free slots than slots"
    return None


def _announcement_tags(pubkey_hex: str, caps: Capabilities) -> tuple[tuple[str, ...], ...]:
    models = tuple(("m", offer.name) for offer in caps.models)
    return (("d", pubkey_hex), *models, ("expiration", str(caps.expires_at)))


def build_announcement(
    caps: Capabilities,
    secret_key: SecretKey,
    now: int,
    aux: bytes | None = None,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
) -> Event:
    """Sign ``caps`` as an announcement event created at ``now`` (unix seconds).

    Raises:
        LocalProtocolError: ``caps`` breaks a bound, is already expired at ``now``, or the
            event would exceed ``max_size`` bytes — receivers would drop it.
    """
    content = msgspec.json.encode(caps)
    try:  # the bounds live in the type and are checked only on decode: round-trip
        msgspec.json.decode(content, type=Capabilities)
    except msgspec.ValidationError as exc:
        raise LocalProtocolError(f"capabilities break a bound: {exc}") from None
    if (problem := _inconsistency(caps)) is not None:
        raise LocalProtocolError(f"capabilities are inconsistent: {problem}")
    if caps.expires_at < now:
        raise LocalProtocolError("announcement would already be expired")
    pubkey_hex = secret_key.public_key.hex()
    unsigned = UnsignedEvent(
        pubkey=pubkey_hex,
        created_at=now,
        kind=ANNOUNCE_KIND,
        tags=_announcement_tags(pubkey_hex, caps),
        content=content.decode("utf-8"),
    )
    event = sign_event(unsigned, secret_key, aux)
    if len(encode_event(event)) > max_size:
        raise LocalProtocolError(f"announcement is over the {max_size}-byte limit")
    return event


def _major_version(version: str) -> int | None:
    if version == PROTOCOL_VERSION:  # the common case, without parsing
        return SUPPORTED_MAJOR
    major, _, _ = version.partition(".")
    return int(major) if major.isascii() and major.isdigit() and len(major) <= 4 else None


def _decode_caps(content: str) -> Capabilities:
    try:
        return _CAPS_DECODER.decode(content)
    except (msgspec.MsgspecError, RecursionError, UnicodeError) as exc:
        raise RemoteProtocolError(f"malformed announcement content: {exc}") from None


def _check_tags(event: Event, caps: Capabilities) -> None:
    d_tags = expirations = 0
    d_ok = expiration_ok = True
    expires_at = str(caps.expires_at)
    for tag in event.tags:  # one pass: this runs for every announcement received
        if len(tag) < 2:
            continue
        if tag[0] == "d":
            d_tags += 1
            d_ok = d_ok and tag[1] == event.pubkey
        elif tag[0] == "expiration":
            expirations += 1
            expiration_ok = expiration_ok and tag[1] == expires_at
    if d_tags != 1 or not d_ok:
        raise RemoteProtocolError("announcement d tag is not the node pubkey")
    if expirations != 1 or not expiration_ok:
        raise RemoteProtocolError("announcement expiration tag does not match its content")


def _parse(
    data: bytes,
    *,
    now: int,
    sender_pubkey: PublicKey | None,
    max_size: int,
    max_future_skew: int,
    key_of: Callable[[str], PublicKey],
) -> Announcement:
    # Cheap checks first, so junk costs microseconds, not a signature verification.
    event = decode_event(data, max_size)
    if event.kind != ANNOUNCE_KIND:
        raise RemoteProtocolError(f"event kind {event.kind} is not an announcement")
    pubkey = key_of(event.pubkey)  # decode_event checked it is 64 lower-case hex
    if sender_pubkey is not None and pubkey != sender_pubkey:
        raise SignatureError("announcement pubkey does not match sender peer id")
    if event.created_at > now + max_future_skew:
        raise RemoteProtocolError("announcement is from the future")
    caps = _decode_caps(event.content)
    if now > caps.expires_at:
        raise RemoteProtocolError("announcement expired")
    if _major_version(caps.protocol_version) != SUPPORTED_MAJOR:
        raise RemoteProtocolError(f"unsupported protocol version {caps.protocol_version!r}")
    if (problem := _inconsistency(caps)) is not None:
        raise RemoteProtocolError(f"announcement is inconsistent: {problem}")
    _check_tags(event, caps)
    verify_event(event, pubkey)
    return Announcement(event=event, caps=caps, pubkey=pubkey)


def parse_announcement(
    data: bytes,
    *,
    now: int,
    sender_pubkey: PublicKey | None,
    max_size: int = DEFAULT_MAX_SIZE,
    max_future_skew: int = 60,
) -> Announcement:
    """Decode and check a received announcement; ``sender_pubkey`` None skips the sender check.

    Checks run cheapest first (shape, kind, sender, times, content, tags), the signature
    last. ``AnnouncementVerifier.parse`` does the same with a cache of node keys.

    Raises:
        RemoteProtocolError: oversized or malformed, wrong kind, "from the future",
            "expired", inconsistent tags or content, or "unsupported protocol version".
        SignatureError: bad id or signature, or "announcement pubkey does not match sender
            peer id".
    """
    return _parse(data, now=now, sender_pubkey=sender_pubkey, max_size=max_size,
                  max_future_skew=max_future_skew, key_of=PublicKey.from_hex)


class AnnouncementVerifier:
    """``parse_announcement`` with a bounded cache of recently seen node keys.

    Lifting a key's x coordinate to a curve point is ~15 % of a signature check; nodes
    re-announce every 30 s with the same key, so a receiver keeps the lifted points.
    """

    def __init__(
        self,
        *,
        max_keys: int = 4096,
        max_size: int = DEFAULT_MAX_SIZE,
        max_future_skew: int = 60,
    ) -> None:
        self._keys: dict[str, PublicKey] = {}
        self._max_keys: Final = max(1, max_keys)
        self._max_size: Final = max_size
        self._max_future_skew: Final = max_future_skew

    def _key_of(self, pubkey_hex: str) -> PublicKey:
        key = self._keys.get(pubkey_hex)
        if key is None:  # first in, first out: live nodes come straight back
            if len(self._keys) >= self._max_keys:
                del self._keys[next(iter(self._keys))]
            key = self._keys[pubkey_hex] = PublicKey.from_hex(pubkey_hex)
        return key

    def parse(self, data: bytes, *, now: int, sender_pubkey: PublicKey | None) -> Announcement:
        """Decode and check one announcement, as ``parse_announcement``.

        Raises:
            RemoteProtocolError: as ``parse_announcement``.
            SignatureError: as ``parse_announcement``.
        """
        return _parse(data, now=now, sender_pubkey=sender_pubkey, max_size=self._max_size,
                      max_future_skew=self._max_future_skew, key_of=self._key_of)
