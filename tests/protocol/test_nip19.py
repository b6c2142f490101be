"""Tests for infernet.protocol.nip19 (note, nprofile, nevent, naddr) against NIP-19 vectors."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import bech32 as bech32_lib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.protocol import nip19
from infernet.protocol.keys import KeyFormatError, PublicKey, SecretKey, decode_npub
from infernet.protocol.nip19 import (
    AddressPointer,
    EventPointer,
    Profile,
    decode_naddr,
    decode_nevent,
    decode_note,
    decode_nprofile,
    encode_naddr,
    encode_nevent,
    encode_note,
    encode_nprofile,
)
from tests.protocol._vectors import load_json, load_json_or_empty

_NIP19: Any = load_json_or_empty("nip19.json") or {"tlv": [], "must_fail": [], "type_guards": []}
TLV_CASES = _NIP19["tlv"]


def full_order(order: list[int]) -> list[int]:
    """The vector lists only the types present; append the absent ones (they emit nothing)."""
    return [*order, *(t for t in (0, 1, 2, 3) if t not in order)]


def test_vector_counts() -> None:
    data = load_json("nip19.json")
    assert (len(data["tlv"]), len(data["must_fail"]), len(data["type_guards"])) == (7, 3, 20)


@pytest.mark.parametrize("case", TLV_CASES, ids=lambda c: f"{c['type']}-{c['source']}")
def test_tlv_vectors_decode_and_reencode(case: dict[str, Any]) -> None:
    data, order = case["data"], full_order(case["encode_tlv_order"])
    text = case["bech32"]
    if case["type"] == "nprofile":
        profile = decode_nprofile(text)
        assert profile == Profile(pubkey=PublicKey.from_hex(data["pubkey"]),
                                  relays=tuple(data["relays"]))
        assert encode_nprofile(profile, tlv_order=order) == text
    elif case["type"] == "nevent":
        pointer = decode_nevent(text)
        assert pointer == EventPointer(id=data["id"], relays=tuple(data["relays"]),
                                       author=PublicKey.from_hex(data["author"]),
                                       kind=data.get("kind"))
        assert encode_nevent(pointer, tlv_order=order) == text
    else:
        address = decode_naddr(text)
        assert address == AddressPointer(identifier=data["identifier"],
                                         pubkey=PublicKey.from_hex(data["pubkey"]),
                                         kind=data["kind"], relays=tuple(data["relays"]))
        assert encode_naddr(address, tlv_order=order) == text


def test_must_fail_vectors() -> None:
    decoders: dict[str, Callable[[str], object]] = {
        "npub": decode_npub, "nevent": decode_nevent, "nprofile": decode_nprofile}
    cases = load_json("nip19.json")["must_fail"]
    for case in cases:
        prefix = case["bech32"].split("1", 1)[0]
        with pytest.raises(KeyFormatError):
            decoders[prefix](case["bech32"])


def test_type_guards_for_note_and_tlv_forms() -> None:
    decoders: dict[str, Callable[[str], object]] = {
        "note": decode_note, "nprofile": decode_nprofile, "nevent": decode_nevent,
        "naddr": decode_naddr}
    cases = [c for c in load_json("nip19.json")["type_guards"] if c["expected_type"] in decoders]
    assert len(cases) == 11
    for case in cases:
        decode = decoders[case["expected_type"]]
        if case["expected"]:
            decode(case["string"])
        else:
            with pytest.raises(KeyFormatError):
                decode(case["string"])


def test_note_round_trip() -> None:
    event_id = "46d731680add2990efe1cc619dc9b8014feeb23261ab9dee50e9d11814de5a2b"
    text = "note1gmtnz6q2m55epmlpe3semjdcq987av3jvx4emmjsa8g3s9x7tg4sclreky"
    assert decode_note(text) == event_id
    assert encode_note(event_id) == text == encode_note(bytes.fromhex(event_id))
    for bad in ("ab" * 31, "zz" * 32, b"\x00" * 31):
        with pytest.raises(KeyFormatError):
            encode_note(bad)


def test_note_of_the_wrong_size_or_prefix() -> None:
    npub = "npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6"
    with pytest.raises(KeyFormatError, match="expected a note"):
        decode_note(npub)
    nprofile = encode_nprofile(Profile(pubkey=decode_npub(npub), relays=("wss://r",)))
    with pytest.raises(KeyFormatError):
        decode_note(nprofile.replace("nprofile", "note"))


def test_unknown_tlv_types_are_ignored_and_singletons_are_enforced() -> None:
    pubkey = bytes(SecretKey.generate().public_key)
    extra = bytes([0, 32]) + pubkey + bytes([9, 3]) + b"abc"
    assert decode_nprofile(nip19._encode("nprofile", extra)).pubkey == PublicKey(pubkey)
    twice = bytes([0, 32]) + pubkey + bytes([0, 32]) + pubkey
    with pytest.raises(KeyFormatError, match="repeats"):
        decode_nprofile(nip19._encode("nprofile", twice))
    with pytest.raises(KeyFormatError, match="no TLV type 0"):
        decode_nprofile(nip19._encode("nprofile", bytes([1, 1]) + b"x"))
    with pytest.raises(KeyFormatError, match="kind"):
        decode_nevent(nip19._encode("nevent", bytes([0, 32]) + pubkey + bytes([3, 2, 0, 1])))
    with pytest.raises(KeyFormatError, match="author and a kind"):
        decode_naddr(nip19._encode("naddr", bytes([0, 1]) + b"d"))


def test_encoders_refuse_what_does_not_fit() -> None:
    pub = SecretKey.generate().public_key
    with pytest.raises(KeyFormatError, match="255"):
        encode_nprofile(Profile(pubkey=pub, relays=("wss://" + "x" * 300,)))
    with pytest.raises(KeyFormatError, match="32 bits"):
        encode_nevent(EventPointer(id="ab" * 32, kind=2**32))
    with pytest.raises(KeyFormatError, match="5000"):
        encode_nprofile(Profile(pubkey=pub, relays=tuple("wss://" + "y" * 200
                                                          for _ in range(20))))
    with pytest.raises(KeyFormatError, match="tlv_order"):
        encode_nprofile(Profile(pubkey=pub), tlv_order=(0, 1))


# --- properties --------------------------------------------------------------------------

_relays = st.lists(st.text(min_size=1, max_size=40).filter(
    lambda s: len(s.encode("utf-8", "surrogatepass")) < 255 and not any(
        0xD800 <= ord(c) <= 0xDFFF for c in s)), max_size=3).map(tuple)
_pubkeys = st.sampled_from([SecretKey.generate().public_key for _ in range(4)])


@settings(max_examples=150, deadline=None, database=None)
@given(_pubkeys, _relays, st.binary(min_size=32, max_size=32),
       st.none() | st.integers(0, 2**32 - 1), st.booleans(), st.permutations([0, 1, 2, 3]))
def test_tlv_round_trips(pub: PublicKey, relays: tuple[str, ...], event_id: bytes,
                         kind: int | None, with_author: bool, order: list[int]) -> None:
    profile = Profile(pubkey=pub, relays=relays)
    assert decode_nprofile(encode_nprofile(profile, tlv_order=order)) == profile
    pointer = EventPointer(id=event_id.hex(), relays=relays,
                           author=pub if with_author else None, kind=kind)
    assert decode_nevent(encode_nevent(pointer, tlv_order=order)) == pointer
    address = AddressPointer(identifier=event_id.hex()[:10], pubkey=pub, kind=kind or 30337,
                             relays=relays)
    assert decode_naddr(encode_naddr(address, tlv_order=order)) == address
    assert decode_note(encode_note(event_id)) == event_id.hex()


_HRPS = st.sampled_from(["note", "nprofile", "nevent", "naddr"])


@settings(max_examples=300, deadline=None, database=None)
@given(st.text(max_size=200) | st.builds(nip19._encode, _HRPS, st.binary(max_size=120)))
def test_decoders_on_arbitrary_text_raise_only_key_format_error(text: str) -> None:
    for decode in (decode_note, decode_nprofile, decode_nevent, decode_naddr):
        with contextlib.suppress(KeyFormatError):
            decode(text)


# --- bech32.json (BIP-173 / BIP-350) -----------------------------------------------------
# NIP-19 is Bech32 only. bech32.valid must decode; bech32.invalid must not (the "overall max
# length exceeded" case too: its 84-character HRP is over BIP-173's 83 even without the
# 90-character total limit that NIP-19 relaxes); every Bech32m string, valid or not, must be
# refused. The segwit_addresses lists test Bitcoin witness-version and program rules, not
# NIP-19; the padding rules they also exercise are checked below on npub strings.


def test_bech32_valid_strings_decode_and_reencode() -> None:
    cases = load_json("bech32.json")["bech32"]["valid"]
    assert len(cases) == 7
    for case in cases:
        hrp, data = nip19.decode_bech32(case["string"])
        words = bech32_lib.convertbits(data, 8, 5, True)
        assert words is not None
        if len(data) * 8 % 5 == 0 or not any(data):  # re-encoding is exact when no bits pad
            assert bech32_lib.bech32_encode(hrp, words) == case["string"].lower()


@pytest.mark.parametrize("group", [("bech32", "invalid"), ("bech32m", "valid"),
                                   ("bech32m", "invalid")], ids="-".join)
def test_bech32_invalid_and_bech32m_strings_are_refused(group: tuple[str, str]) -> None:
    cases = load_json("bech32.json")[group[0]][group[1]]
    assert cases
    for case in cases:
        with pytest.raises(KeyFormatError):
            nip19.decode_bech32(case["string"])


def _npub_with_words(words: list[int]) -> str:
    return bech32_lib.bech32_encode("npub", words)


def test_padding_rules_on_npub() -> None:
    key = SecretKey.generate().public_key
    words = bech32_lib.convertbits(bytes(key), 8, 5, True)
    assert words is not None and len(words) == 52  # 256 bits + 4 padding bits
    assert decode_npub(_npub_with_words(words)) == key
    nonzero = [*words[:-1], words[-1] | 1]  # non-zero padding in 8-to-5 conversion
    with pytest.raises(KeyFormatError):
        decode_npub(_npub_with_words(nonzero))
    with pytest.raises(KeyFormatError):
        decode_npub(_npub_with_words([*words, 0]))  # more than 4 bits of padding
