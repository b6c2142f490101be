"""Tests for infernet.protocol.event against known-good NIP-01 events."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.protocol.errors import (
    InfernetError,
    LocalProtocolError,
    RemoteProtocolError,
    SignatureError,
)
from infernet.protocol.event import (
    UnsignedEvent,
    compute_id,
    decode_event,
    encode_event,
    serialize_for_id,
    sign_event,
    tag_values,
    verify_event,
)
from infernet.protocol.keys import SecretKey


def vectors_dir() -> Path:
    """Return $INFERNET_VECTORS, else ../shared/vectors beside the repo; fail if missing."""
    override = os.environ.get("INFERNET_VECTORS")
    path = (
        Path(override)
        if override
        else (Path(__file__).resolve().parents[2].parent / "shared" / "vectors")
    )
    if not path.is_dir():
        pytest.fail(f"test vectors not found at {path}; set INFERNET_VECTORS to the vectors dir")
    return path


def nip01() -> Any:
    return json.loads((vectors_dir() / "nip01-events.json").read_text(encoding="utf-8"))


def raw(event: dict[str, Any]) -> bytes:
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


KEY = SecretKey.from_hex("0beebd062ec8735f4243466049d7747ef5d6594ee838de147f8aab842b15e273")
MAX = 65536


def unsigned(**overrides: Any) -> UnsignedEvent:
    fields: dict[str, Any] = {
        "pubkey": KEY.public_key.hex(),
        "created_at": 1_700_000_000,
        "kind": 1,
        "tags": (("p", "ab" * 32),),
        "content": "hello",
    }
    fields.update(overrides)
    return UnsignedEvent(**fields)


# --- vectors ----------------------------------------------------------------------------


def test_valid_vectors_recompute_and_verify() -> None:
    cases = nip01()["valid"]
    assert len(cases) == 11
    for case in cases:
        event = decode_event(raw(case["event"]), MAX)
        assert compute_id(event) == case["event"]["id"]
        verify_event(event)


def test_valid_vectors_reencode_to_the_same_json() -> None:
    for case in nip01()["valid"]:
        event = decode_event(raw(case["event"]), MAX)
        assert json.loads(encode_event(event)) == case["event"]


def test_unsigned_rumor_id_matches() -> None:
    (case,) = nip01()["unsigned_id_only"]
    fields = {k: v for k, v in case["event"].items() if k != "id"}
    fields["tags"] = tuple(tuple(t) for t in fields["tags"])
    assert compute_id(UnsignedEvent(**fields)) == case["event"]["id"]


def test_negative_vectors_are_rejected_as_id_mismatch() -> None:
    cases = nip01()["negative"]
    assert len(cases) == 2
    for case in cases:
        event = decode_event(raw(case["event"]), MAX)
        with pytest.raises(SignatureError, match="id does not match"):
            verify_event(event)


def test_serialization_matches_nip01_rule_for_every_character() -> None:
    # NIP-01 (see notes in nip01-events.json): compact, UTF-8 verbatim, JSON escapes only.
    text = "".join(chr(i) for i in range(0x250)) + "\u2028\u2029\ufeff😀/<>&"
    ev = unsigned(content=text, tags=(("t", text),))
    expected = json.dumps(
        [0, ev.pubkey, ev.created_at, ev.kind, [list(t) for t in ev.tags], ev.content],
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    assert serialize_for_id(ev) == expected


def test_serialization_escapes_exactly() -> None:
    ev = unsigned(content='a\n"\\\r\t\b\fé\x01', tags=())
    assert serialize_for_id(ev).endswith(b',"a\\n\\"\\\\\\r\\t\\b\\f\xc3\xa9\\u0001"]')
    assert serialize_for_id(ev).startswith(b'[0,"' + KEY.public_key.hex().encode() + b'",')


# --- sign / verify -----------------------------------------------------------------------


def test_sign_then_verify_round_trip() -> None:
    event = sign_event(unsigned(), KEY, aux=bytes(32))
    verify_event(event)
    assert event.id == compute_id(unsigned())
    assert decode_event(encode_event(event), MAX) == event
    assert sign_event(unsigned(), KEY, aux=bytes(32)) == event  # deterministic given aux


def test_sign_rejects_foreign_pubkey() -> None:
    other = SecretKey.generate()
    with pytest.raises(LocalProtocolError, match="not the public key"):
        sign_event(unsigned(pubkey=other.public_key.hex()), KEY)


def test_sign_rejects_lone_surrogate() -> None:
    with pytest.raises(LocalProtocolError, match="surrogate"):
        sign_event(unsigned(content="\ud800"), KEY)


def test_tampered_content_is_id_mismatch() -> None:
    event = sign_event(unsigned(), KEY)
    with pytest.raises(SignatureError, match="id does not match"):
        verify_event(msgspec.structs.replace(event, content="changed"))


def test_valid_id_with_bad_signature_is_bad_signature() -> None:
    event = sign_event(unsigned(), KEY)
    forged = sign_event(unsigned(content="other"), KEY).sig
    with pytest.raises(SignatureError, match="bad event signature"):
        verify_event(msgspec.structs.replace(event, sig=forged))


def test_signature_by_another_key_is_bad_signature() -> None:
    other = SecretKey.generate()
    event = sign_event(unsigned(pubkey=other.public_key.hex()), other)
    swapped = msgspec.structs.replace(event, pubkey=KEY.public_key.hex())
    swapped = msgspec.structs.replace(swapped, id=compute_id(swapped))
    with pytest.raises(SignatureError, match="bad event signature"):
        verify_event(swapped)


@pytest.mark.parametrize(
    ("field", "value"),
    [("pubkey", "zz" * 32), ("pubkey", "ab"), ("sig", "zz" * 64), ("content", "\ud800")],
)
def test_verify_of_hand_built_garbage_raises_signature_error(field: str, value: str) -> None:
    event = msgspec.structs.replace(sign_event(unsigned(), KEY), **{field: value})
    with pytest.raises(SignatureError):
        verify_event(event)


def test_off_curve_pubkey_is_bad_signature() -> None:
    event = sign_event(unsigned(), KEY)
    moved = msgspec.structs.replace(event, pubkey="ff" * 32)
    moved = msgspec.structs.replace(moved, id=compute_id(moved))
    with pytest.raises(SignatureError, match="bad event signature"):
        verify_event(moved)


def test_tag_values() -> None:
    ev = unsigned(tags=(("d", "x"), ("m", "a"), ("m",), ("m", "b", "extra"), ("e", "z")))
    assert tag_values(ev, "m") == ["a", "b"]
    assert tag_values(ev, "q") == []


# --- decode ------------------------------------------------------------------------------


def good_fields() -> dict[str, Any]:
    return msgspec.to_builtins(sign_event(unsigned(), KEY))  # type: ignore[no-any-return]


def with_field(name: str, value: Any) -> bytes:
    fields = good_fields()
    fields[name] = value
    return raw(fields)


def without_field(name: str) -> bytes:
    fields = good_fields()
    del fields[name]
    return raw(fields)


BAD_INPUTS: list[tuple[str, bytes]] = [
    ("empty", b""),
    ("not json", b"{nope"),
    ("array", b"[]"),
    ("bad utf-8", b'{"content":"\xff"}'),
    ("lone surrogate", with_field("content", "x").replace(b'"x"', b'"\\ud800"')),
    ("deep nesting", b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"),
    ("trailing garbage", raw(good_fields()) + b"x"),
    ("missing sig", without_field("sig")),
    ("missing id", without_field("id")),
    ("upper-case id", with_field("id", good_fields()["id"].upper())),
    ("short id", with_field("id", "ab" * 31)),
    ("id with newline", with_field("id", good_fields()["id"] + "\n")),
    ("short pubkey", with_field("pubkey", "ab" * 31)),
    ("upper-case pubkey", with_field("pubkey", good_fields()["pubkey"].upper())),
    ("short sig", with_field("sig", "ab" * 63)),
    ("non-hex sig", with_field("sig", "zz" * 64)),
    ("string created_at", with_field("created_at", "1700000000")),
    ("float created_at", with_field("created_at", 1.5)),
    ("negative created_at", with_field("created_at", -1)),
    ("huge created_at", with_field("created_at", 2**64)),
    ("bool kind", with_field("kind", True)),
    ("kind too big", with_field("kind", 65536)),
    ("tags not list", with_field("tags", "p")),
    ("tag not list", with_field("tags", ["p"])),
    ("tag with number", with_field("tags", [["p", 1]])),
    ("content not string", with_field("content", 5)),
    ("null content", with_field("content", None)),
]


@pytest.mark.parametrize(("name", "data"), BAD_INPUTS, ids=[n for n, _ in BAD_INPUTS])
def test_decode_rejects_malformed(name: str, data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_event(data, MAX)


def test_decode_rejects_oversized_before_parsing() -> None:
    data = raw(good_fields())
    assert decode_event(data, len(data)).content == "hello"
    with pytest.raises(RemoteProtocolError, match="over the"):
        decode_event(data, len(data) - 1)


def test_decode_ignores_unknown_fields() -> None:
    event = decode_event(with_field("relay_hint", {"future": [1, 2]}), MAX)
    verify_event(event)


GOOD_RAW = raw(good_fields())


@settings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(st.integers(0, len(GOOD_RAW) - 1), st.integers(0, 255)), max_size=4))
def test_decode_never_raises_foreign_errors_on_mutations(edits: list[tuple[int, int]]) -> None:
    data = bytearray(GOOD_RAW)
    for pos, byte in edits:
        data[pos] = byte
    with contextlib.suppress(InfernetError):
        verify_event(decode_event(bytes(data), MAX))


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=512))
def test_decode_never_raises_foreign_errors_on_noise(data: bytes) -> None:
    with contextlib.suppress(InfernetError):
        verify_event(decode_event(data, MAX))
