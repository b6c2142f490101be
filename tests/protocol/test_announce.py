"""Tests for infernet.protocol.announce: round trip and every rejection path."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest

from infernet.protocol.announce import (
    ANNOUNCE_KIND,
    DEFAULT_MAX_SIZE,
    PROTOCOL_VERSION,
    Capabilities,
    ModelOffer,
    build_announcement,
    parse_announcement,
)
from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError, SignatureError
from infernet.protocol.event import (
    Event,
    UnsignedEvent,
    compute_id,
    encode_event,
    sign_event,
    tag_values,
)
from infernet.protocol.keys import SecretKey, peer_id_bytes, public_key_from_peer_id_bytes

KEY = SecretKey.from_hex("e108399bd8424357a710b606ae0c13166d853d327e47a6e5e038197346bdbf45")
NOW = 1_800_000_000


def caps(**overrides: Any) -> Capabilities:
    fields: dict[str, Any] = {
        "backend": "llama.cpp",
        "models": (
            ModelOffer(name="gemma3-270m", weights_hash="sha256:" + "ab" * 32, context_length=8192),
            ModelOffer(name="llama3:8b", price_per_1k_input=0.1, price_per_1k_output=0.4),
        ),
        "vram_tier": "24gb",
        "gpu": "RTX 4090",
        "slots_total": 4,
        "slots_free": 3,
        "load": 0.25,
        "listen_addrs": ("/ip4/127.0.0.1/tcp/46337",),
        "expires_at": NOW + 120,
    }
    fields.update(overrides)
    return Capabilities(**fields)


def announce(**overrides: Any) -> bytes:
    return encode_event(build_announcement(caps(**overrides), KEY, NOW, aux=bytes(32)))


def resign(event: Event, **changes: Any) -> bytes:
    """Re-sign ``event`` with changed fields, so only the change under test is wrong."""
    fields: dict[str, Any] = {
        "pubkey": event.pubkey,
        "created_at": event.created_at,
        "kind": event.kind,
        "tags": event.tags,
        "content": event.content,
    }
    fields.update(changes)
    return encode_event(sign_event(UnsignedEvent(**fields), KEY))


def resign_content(content: dict[str, Any], **changes: Any) -> bytes:
    event = build_announcement(caps(), KEY, NOW)
    return resign(event, content=json.dumps(content), **changes)


def parse(data: bytes, **kw: Any) -> Any:
    kw.setdefault("now", NOW)
    kw.setdefault("sender_pubkey", KEY.public_key)
    return parse_announcement(data, **kw)


# --- round trip --------------------------------------------------------------------------


def test_round_trip() -> None:
    event = build_announcement(caps(), KEY, NOW, aux=bytes(32))
    assert event.kind == ANNOUNCE_KIND and 30000 <= ANNOUNCE_KIND < 40000
    assert event.created_at == NOW and event.pubkey == KEY.public_key.hex()
    assert tag_values(event, "d") == [KEY.public_key.hex()]
    assert tag_values(event, "m") == ["gemma3-270m", "llama3:8b"]
    assert tag_values(event, "expiration") == [str(NOW + 120)]
    got = parse(encode_event(event))
    assert got.event == event and got.caps == caps() and got.pubkey == KEY.public_key
    assert got.caps.protocol_version == PROTOCOL_VERSION == "1.0"


def test_sender_pubkey_from_a_peer_id_matches() -> None:
    sender = public_key_from_peer_id_bytes(peer_id_bytes(KEY.public_key))
    assert parse(announce(), sender_pubkey=sender).pubkey == KEY.public_key


def test_no_sender_check_when_sender_unknown() -> None:
    assert parse(announce(), sender_pubkey=None).pubkey == KEY.public_key


def test_minimal_content_gets_defaults() -> None:
    data = resign_content(
        {"backend": "ollama", "expires_at": NOW + 60},
        tags=(("d", KEY.public_key.hex()), ("expiration", str(NOW + 60))),
    )
    got = parse(data).caps
    assert got == Capabilities(backend="ollama", expires_at=NOW + 60)
    assert (got.models, got.vram_tier, got.slots_total, got.slots_free) == ((), "cpu", 1, 1)


def test_unknown_fields_are_tolerated() -> None:
    content = msgspec.to_builtins(caps())
    content["future_field"] = {"nested": [1, 2, 3]}
    content["models"][0]["quantization"] = "Q4_K_M"
    content["protocol_version"] = "1.7"
    got = parse(resign_content(content)).caps
    assert got.models[0].name == "gemma3-270m" and got.protocol_version == "1.7"


def test_boundaries_are_accepted() -> None:
    # created exactly at now + skew, and now exactly at expires_at: both still valid.
    event = build_announcement(caps(expires_at=NOW + 60), KEY, NOW + 60)
    assert parse(encode_event(event), max_future_skew=60).caps.expires_at == NOW + 60
    assert parse(announce(expires_at=NOW + 120), now=NOW + 120).caps.expires_at == NOW + 120


# --- rejections --------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"kind":30337}', b"\xff\xfe"])
def test_garbage_is_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse(data)


def test_oversized_is_rejected() -> None:
    data = announce()
    with pytest.raises(RemoteProtocolError, match="over the"):
        parse(data, max_size=len(data) - 1)
    with pytest.raises(RemoteProtocolError, match="over the"):
        parse(data + b" " * DEFAULT_MAX_SIZE)


def test_wrong_kind_is_rejected() -> None:
    event = build_announcement(caps(), KEY, NOW)
    with pytest.raises(RemoteProtocolError, match="not an announcement"):
        parse(resign(event, kind=1))


def test_bad_id_is_signature_error() -> None:
    event = build_announcement(caps(), KEY, NOW)
    tampered = msgspec.structs.replace(event, content=event.content.replace("4090", "5090"))
    with pytest.raises(SignatureError, match="id does not match"):
        parse(encode_event(tampered))


def test_bad_signature_is_signature_error() -> None:
    event = build_announcement(caps(), KEY, NOW)
    other = build_announcement(caps(gpu="other"), KEY, NOW)
    with pytest.raises(SignatureError, match="bad event signature"):
        parse(encode_event(msgspec.structs.replace(event, sig=other.sig)))


def test_pubkey_not_sender_is_signature_error() -> None:
    stranger = SecretKey.generate().public_key
    with pytest.raises(SignatureError, match="does not match sender peer id"):
        parse(announce(), sender_pubkey=stranger)


def test_from_the_future_is_rejected() -> None:
    event = build_announcement(caps(expires_at=NOW + 500), KEY, NOW + 61)
    with pytest.raises(RemoteProtocolError, match="from the future"):
        parse(encode_event(event), max_future_skew=60)


def test_expired_is_rejected() -> None:
    with pytest.raises(RemoteProtocolError, match="expired"):
        parse(announce(expires_at=NOW + 120), now=NOW + 121)


@pytest.mark.parametrize("version", ["2.0", "0.9", "", "x.1", "١.0", "10"])
def test_unsupported_protocol_version(version: str) -> None:
    content = msgspec.to_builtins(caps())
    content["protocol_version"] = version
    with pytest.raises(RemoteProtocolError, match="unsupported protocol version"):
        parse(resign_content(content))


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        "[]",
        '{"expires_at": 1}',  # backend missing
        '{"backend": "x"}',  # expires_at missing
        '{"backend": 5, "expires_at": 1}',
        '{"backend": "x", "expires_at": 1, "slots_free": -1}',
        '{"backend": "x", "expires_at": 1, "load": 1e400}',
        '{"backend": "x", "expires_at": 1, "models": [{"name": ""}]}',
        '{"backend": "x", "expires_at": 1, "models": [{"context_length": 5}]}',
        '{"backend": "x", "expires_at": 1, "models": [{"name": "m", "price_per_1k_input": -1}]}',
        '{"backend": "x", "expires_at": 1, "listen_addrs": ["a", 1]}',
        # a weights hash goes into HTTP headers: no line breaks, spaces or non-ASCII
        '{"backend": "x", "expires_at": 1, "models": [{"name": "m", "weights_hash": "a\\r\\n"}]}',
        '{"backend": "x", "expires_at": 1, "models": [{"name": "m", "weights_hash": "sha256 ab"}]}',
        '{"backend": "x", "expires_at": 1, "models": [{"name": "m", "weights_hash": "é"}]}',
    ],
)
def test_malformed_content_is_rejected(content: str) -> None:
    event = build_announcement(caps(), KEY, NOW)
    with pytest.raises(RemoteProtocolError, match="malformed announcement content"):
        parse(resign(event, content=content))


def test_inconsistent_content_is_rejected() -> None:
    content = msgspec.to_builtins(caps())
    content["slots_free"] = content["slots_total"] + 1
    with pytest.raises(RemoteProtocolError, match="more free slots"):
        parse(resign_content(content))
    content = msgspec.to_builtins(caps())
    content["models"] = [*content["models"], content["models"][0]]
    with pytest.raises(RemoteProtocolError, match="appears twice"):
        parse(resign_content(content))


@pytest.mark.parametrize(
    "tags",
    [
        (("expiration", str(NOW + 120)),),  # no d tag
        (("d", "ab" * 32), ("expiration", str(NOW + 120))),  # d tag of another node
        (("d", "PUBKEY"), ("d", "PUBKEY"), ("expiration", str(NOW + 120))),
        (("d", "PUBKEY"),),  # no expiration tag
        (("d", "PUBKEY"), ("expiration", str(NOW + 999))),  # tag disagrees with content
    ],
)
def test_bad_tags_are_rejected(tags: tuple[tuple[str, ...], ...]) -> None:
    event = build_announcement(caps(), KEY, NOW)
    fixed = tuple(tuple(v.replace("PUBKEY", KEY.public_key.hex()) for v in t) for t in tags)
    with pytest.raises(RemoteProtocolError, match="tag"):
        parse(resign(event, tags=fixed))


# --- build refuses what receivers would drop ---------------------------------------------


def test_build_refuses_expired() -> None:
    with pytest.raises(LocalProtocolError, match="expired"):
        build_announcement(caps(expires_at=NOW - 1), KEY, NOW)


@pytest.mark.parametrize(
    "bad",
    [
        {"slots_free": -1},
        {"load": float("nan")},
        {"models": (ModelOffer(name=""),)},
        {"listen_addrs": tuple(f"/ip4/10.0.0.{i}/tcp/1" for i in range(17))},
        {"slots_free": 5, "slots_total": 4},
        {"models": (ModelOffer(name="a"), ModelOffer(name="a"))},
    ],
)
def test_build_refuses_out_of_bounds(bad: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError, match="capabilities"):
        build_announcement(caps(**bad), KEY, NOW)


def test_build_refuses_oversized() -> None:
    many = tuple(ModelOffer(name=f"model-{i:03d}-" + "x" * 200) for i in range(64))
    with pytest.raises(LocalProtocolError, match="byte limit"):
        build_announcement(caps(models=many), KEY, NOW)


def test_build_then_compute_id_is_stable() -> None:
    event = build_announcement(caps(), KEY, NOW, aux=bytes(32))
    assert compute_id(event) == event.id
    assert build_announcement(caps(), KEY, NOW, aux=bytes(32)) == event
