"""An independent implementation agrees: events, announcements and bech32 via pynostr 0.7.0."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pynostr.event import Event as TheirEvent
from pynostr.key import PrivateKey as TheirKey
from pynostr.key import PublicKey as TheirPublicKey
from pynostr.utils import nprofile_decode, nprofile_encode

from infernet.protocol.announce import Capabilities, ModelOffer, build_announcement
from infernet.protocol.errors import SignatureError
from infernet.protocol.event import (
    UnsignedEvent,
    compute_id,
    decode_event,
    encode_event,
    sign_event,
    verify_event,
)
from infernet.protocol.keys import (
    SecretKey,
    decode_npub,
    decode_nsec,
    encode_npub,
    encode_nsec,
)
from infernet.protocol.nip19 import (
    Profile,
    decode_note,
    decode_nprofile,
    encode_note,
    encode_nprofile,
)

KEYS = [SecretKey.from_hex(f"{i:064x}") for i in (1, 2, 0xDEADBEEF)]
_text = st.text(max_size=80).filter(lambda s: not any(0xD800 <= ord(c) <= 0xDFFF for c in s))
_tags = st.lists(st.lists(_text, min_size=1, max_size=3), max_size=3)


def theirs_from_ours(event: Any) -> TheirEvent:
    return TheirEvent.from_dict(json.loads(encode_event(event)))


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from(KEYS), _text, _tags, st.integers(0, 65535), st.integers(0, 2**40))
def test_our_events_verify_in_pynostr(key: SecretKey, content: str, tags: list[list[str]],
                                      kind: int, created_at: int) -> None:
    ours = sign_event(UnsignedEvent(pubkey=key.public_key.hex(), created_at=created_at,
                                    kind=kind, tags=tuple(tuple(t) for t in tags),
                                    content=content), key)
    theirs = theirs_from_ours(ours)
    assert theirs.verify()
    assert theirs.id == ours.id


@settings(max_examples=60, deadline=None, database=None)
@given(st.sampled_from(KEYS), _text, _tags, st.integers(0, 65535))
def test_pynostr_events_verify_here(key: SecretKey, content: str, tags: list[list[str]],
                                    kind: int) -> None:
    theirs = TheirEvent(content=content, kind=kind, tags=tags, created_at=1_700_000_000)
    theirs.sign(key.hex())
    data = json.dumps(theirs.to_dict(), ensure_ascii=False).encode()
    ours = decode_event(data, 1 << 20)
    verify_event(ours)
    assert compute_id(ours) == theirs.id


def test_announcements_verify_in_pynostr() -> None:
    caps = Capabilities(backend="ollama", models=(ModelOffer(name="qwen2.5:7b",
                        weights_hash="sha256:" + "ab" * 32, quantization="Q4_K_M"),),
                        vram_tier=">=24gb", expires_at=1_800_000_120)
    event = build_announcement(caps, KEYS[2], 1_800_000_000)
    theirs = theirs_from_ours(event)
    assert theirs.verify() and theirs.kind == 30337
    assert theirs.get_tag_list("d") == [[KEYS[2].public_key.hex()]]


def test_a_tampered_event_fails_in_both() -> None:
    event = sign_event(UnsignedEvent(pubkey=KEYS[0].public_key.hex(), created_at=1, kind=1,
                                     content="x"), KEYS[0])
    tampered = msgspec.structs.replace(event, content="y")
    theirs = TheirEvent.from_dict(msgspec.to_builtins(tampered))  # recomputes the id
    assert not theirs.verify()
    with pytest.raises(SignatureError):
        verify_event(tampered)


def test_bech32_keys_round_trip_through_pynostr() -> None:
    for key in KEYS:
        theirs = TheirKey(key.secret_bytes())
        assert theirs.bech32() == encode_nsec(key)
        assert decode_nsec(theirs.bech32()) == key
        assert theirs.public_key.bech32() == encode_npub(key.public_key)
        assert decode_npub(theirs.public_key.bech32()) == key.public_key
        assert TheirPublicKey.from_npub(encode_npub(key.public_key)).hex() == key.public_key.hex()
        assert TheirKey.from_nsec(encode_nsec(key)).hex() == key.hex()


def test_note_and_nprofile_round_trip_through_pynostr() -> None:
    theirs = TheirEvent(content="hi", kind=1, created_at=1_700_000_000)
    theirs.sign(KEYS[1].hex())
    assert decode_note(theirs.bech32()) == theirs.id
    assert encode_note(theirs.id) == theirs.bech32()
    relays = ["wss://relay.example.com", "wss://nos.lol"]
    ours = encode_nprofile(Profile(pubkey=KEYS[1].public_key, relays=tuple(relays)))
    assert nprofile_encode(KEYS[1].public_key.hex(), relays) == ours
    assert nprofile_decode(ours) == (KEYS[1].public_key.hex(), relays)
    assert decode_nprofile(nprofile_encode(KEYS[1].public_key.hex(), relays)).relays == tuple(
        relays)
