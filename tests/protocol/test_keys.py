"""Tests for infernet.protocol.keys against BIP-340, NIP-19 and libp2p peer-ID vectors."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
from bech32 import bech32_encode, convertbits

from infernet.protocol.errors import InfernetError, LocalProtocolError, RemoteProtocolError
from infernet.protocol.keys import (
    KeyFormatError,
    PublicKey,
    SecretKey,
    decode_npub,
    decode_nsec,
    encode_npub,
    encode_nsec,
    peer_id_bytes,
    peer_id_from_base58,
    peer_id_to_base58,
    public_key_from_peer_id_bytes,
)


def vectors_path() -> Path:
    """Return $INFERNET_VECTORS, else ../shared/vectors beside the repository root."""
    override = os.environ.get("INFERNET_VECTORS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2].parent / "shared" / "vectors"


def vectors_dir() -> Path:
    """Return the vectors directory; a missing one fails the test (never skips it)."""
    path = vectors_path()
    if not path.is_dir():
        pytest.fail(f"test vectors not found at {path}; set INFERNET_VECTORS to the vectors dir")
    return path


def load_json(name: str) -> Any:
    return json.loads((vectors_dir() / name).read_text(encoding="utf-8"))


def bip340_rows() -> list[dict[str, str]]:
    # Read at collection time for parametrize; a missing file gives no rows here and
    # test_bip340_vector_file_is_complete fails with the path.
    path = vectors_path() / "bip-0340" / "test-vectors.csv"
    if not path.is_file():
        return []
    with path.open(newline="", encoding="ascii") as f:
        return list(csv.DictReader(f))


BIP340 = bip340_rows()


def _row_id(row: dict[str, str]) -> str:
    return f"bip340-{row['index']}"


# --- BIP-340 -----------------------------------------------------------------------------


def test_bip340_vector_file_is_complete() -> None:
    path = vectors_dir() / "bip-0340" / "test-vectors.csv"
    assert path.is_file(), f"missing {path}"
    assert b"\r\n" in path.read_bytes()  # official file keeps CRLF; csv handles it
    assert [r["index"] for r in BIP340] == [str(i) for i in range(19)]
    assert sum(r["verification result"] == "TRUE" for r in BIP340) == 9


@pytest.mark.parametrize("row", [r for r in BIP340 if r.get("secret key")], ids=_row_id)
def test_bip340_sign(row: dict[str, str]) -> None:
    key = SecretKey.from_hex(row["secret key"])
    assert key.public_key.hex() == row["public key"].lower()
    msg = bytes.fromhex(row["message"])
    expected = bytes.fromhex(row["signature"])
    if len(msg) == 32:
        assert key.sign(msg, bytes.fromhex(row["aux_rand"])) == expected
    else:
        # Rows 15-18 sign 0/1/17/100-byte messages. coincurve's public API only signs
        # 32-byte digests, and Nostr only ever signs 32-byte ids, so SecretKey.sign refuses;
        # the expected signature must still verify.
        with pytest.raises(LocalProtocolError):
            key.sign(msg, bytes.fromhex(row["aux_rand"]))
    assert key.public_key.verify(expected, msg)


@pytest.mark.parametrize("row", BIP340, ids=_row_id)
def test_bip340_verify(row: dict[str, str]) -> None:
    pub = PublicKey.from_hex(row["public key"])
    result = pub.verify(bytes.fromhex(row["signature"]), bytes.fromhex(row["message"]))
    assert result is (row["verification result"] == "TRUE"), row["comment"]


def test_bip340_sign_is_deterministic_given_aux_and_random_without() -> None:
    key = SecretKey.from_hex("b7e151628aed2a6abf7158809cf4f3c762e7160f38b4da56a784d9045190cfef")
    msg = bytes(range(32))
    assert key.sign(msg, bytes(32)) == key.sign(msg, bytes(32))
    first, second = key.sign(msg), key.sign(msg)
    assert first != second
    assert key.public_key.verify(first, msg) and key.public_key.verify(second, msg)


@pytest.mark.parametrize(
    ("sig", "msg"),
    [(b"", bytes(32)), (bytes(63), bytes(32)), (bytes(65), bytes(32)), (bytes(64), b"")],
)
def test_verify_returns_false_on_garbage(sig: bytes, msg: bytes) -> None:
    pub = SecretKey.generate().public_key
    assert pub.verify(sig, msg) is False


def test_verify_with_off_curve_key_returns_false() -> None:
    # x = p (field size) is not a valid coordinate; BIP-340 row 14 uses it.
    off_curve = PublicKey(b"\xff" * 32)
    key = SecretKey.generate()
    assert off_curve.verify(key.sign(bytes(32)), bytes(32)) is False


def test_sign_rejects_bad_lengths() -> None:
    key = SecretKey.generate()
    with pytest.raises(LocalProtocolError):
        key.sign(bytes(31))
    with pytest.raises(LocalProtocolError):
        key.sign(bytes(32), aux=bytes(31))


# --- key objects -------------------------------------------------------------------------


def test_secret_key_repr_is_redacted() -> None:
    key = SecretKey.generate()
    assert repr(key) == "SecretKey(<redacted>)"
    assert key.hex() not in str(key) and key.hex() not in f"{key!r}"


def test_nip01_keypairs_derive_their_xonly_pubkeys() -> None:
    for pair in load_json("nip01-events.json")["keypairs"]:
        key = SecretKey.from_hex(pair["secret_key"])
        assert key.public_key.hex() == pair["xonly_pubkey"]
        assert SecretKey.from_hex(key.hex()) == key


@pytest.mark.parametrize(
    "text",
    [
        "00" * 32,  # zero
        "fffffffffffffffffffffffffffffffebaaedce6af48a03bbfd25e8cd0364141",  # n
        "ff" * 32,
        "zz" * 32,
        "ab" * 31,
        "ab" * 33,
    ],
)
def test_secret_key_rejects_bad_input(text: str) -> None:
    with pytest.raises(KeyFormatError) as info:
        SecretKey.from_hex(text)
    assert info.value.code == "bad_request"


def test_public_key_rejects_bad_lengths_and_hex() -> None:
    for bad in ("ab" * 31, "ab" * 33, "g" * 64):
        with pytest.raises(KeyFormatError):
            PublicKey.from_hex(bad)
    with pytest.raises(KeyFormatError):
        PublicKey(bytes(33))


def test_public_key_value_semantics() -> None:
    hex_key = "3bf0c63fcb93463407af97a5e5ee64fa883d107ef9e558472c4eb9aaaefa459d"
    a, b = PublicKey.from_hex(hex_key), PublicKey.from_hex(hex_key.upper())
    assert a == b and hash(a) == hash(b) and a.hex() == hex_key and bytes(a) == bytes(b)
    assert repr(a) == f"PublicKey({hex_key})"


def test_generate_uses_given_source_and_skips_invalid_scalars() -> None:
    draws = iter([bytes(32), b"\xff" * 32, b"\x01" * 32])
    key = SecretKey.generate(lambda n: next(draws))
    assert key.secret_bytes() == b"\x01" * 32


def test_generate_gives_up_on_a_broken_source() -> None:
    with pytest.raises(InfernetError) as info:
        SecretKey.generate(lambda n: bytes(n))
    assert info.value.code == "internal_error"


# --- NIP-19 -----------------------------------------------------------------------------


def nip19_bare() -> list[dict[str, str]]:
    return list(load_json("nip19.json")["bare"])


def test_nip19_bare_vectors() -> None:
    cases = nip19_bare()
    assert len(cases) == 5
    for case in cases:
        if case["type"] == "npub":
            pub = decode_npub(case["bech32"])
            assert pub.hex() == case["hex"]
            assert encode_npub(pub) == case["bech32"]
        else:
            key = decode_nsec(case["bech32"])
            assert key.hex() == case["hex"]
            assert encode_nsec(key) == case["bech32"]


def test_nip19_must_fail_npub() -> None:
    cases = [c for c in load_json("nip19.json")["must_fail"] if c["bech32"].startswith("npub")]
    assert cases
    for case in cases:
        with pytest.raises(KeyFormatError):
            decode_npub(case["bech32"])


def test_nip19_type_guards_for_bare_keys() -> None:
    decoders = {"npub": decode_npub, "nsec": decode_nsec}
    cases = [c for c in load_json("nip19.json")["type_guards"] if c["expected_type"] in decoders]
    assert len(cases) == 6
    for case in cases:
        decode = decoders[case["expected_type"]]
        if case["expected"]:
            decode(case["string"])
        else:
            with pytest.raises(KeyFormatError):
                decode(case["string"])


@pytest.mark.parametrize(
    "text",
    [
        "",
        "npub1",
        "note1gmtnz6q2m55epml",
        "x" * 6000,
        "NPUB180CVV07TJDRRGPA0J7J7TMNYL2YR6YR7L8J4S3EVF6U64TH6GKWSyjh6w6",  # mixed case
        "npub1 80cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6",
    ],
)
def test_decode_npub_rejects(text: str) -> None:
    with pytest.raises(KeyFormatError):
        decode_npub(text)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_decode_npub_rejects_wrong_payload_length(size: int) -> None:
    words = convertbits(bytes(range(size)), 8, 5, True)
    assert words is not None
    with pytest.raises(KeyFormatError, match="exactly 32 bytes"):
        decode_npub(bech32_encode("npub", words))


def test_decode_nsec_rejects_npub_and_zero_key() -> None:
    with pytest.raises(KeyFormatError, match="expected a nsec"):
        decode_nsec("npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6")
    # A correctly checksummed nsec of 32 zero bytes is not a valid scalar.
    words = convertbits(bytes(32), 8, 5, True)
    assert words is not None
    with pytest.raises(KeyFormatError, match="out of range"):
        decode_nsec(bech32_encode("nsec", words))


def test_npub_uppercase_is_accepted() -> None:
    text = "npub180cvv07tjdrrgpa0j7j7tmnyl2yr6yr7l8j4s3evf6u64th6gkwsyjh6w6"
    assert decode_npub(text.upper()) == decode_npub(text)


def test_npub_nsec_round_trip_random() -> None:
    key = SecretKey.generate()
    assert decode_nsec(encode_nsec(key)) == key
    assert decode_npub(encode_npub(key.public_key)) == key.public_key


# --- libp2p peer IDs ---------------------------------------------------------------------


def test_secp256k1_peer_id_vector() -> None:
    vec = load_json("libp2p-peerid-secp256k1.json")
    spec, derived = vec["secp256k1"], vec["collector_secp256k1"]
    key = SecretKey.from_hex(spec["private_key_hex"])
    assert key.public_key.hex() == derived["xonly_pubkey_hex"]
    multihash = bytes.fromhex(derived["identity_multihash_hex"])
    assert peer_id_to_base58(multihash) == derived["peer_id_base58btc"]
    assert peer_id_from_base58(derived["peer_id_base58btc"]) == multihash
    # The spec key has odd Y (03): parsing drops the parity and still finds the x-only key.
    assert derived["y_parity_odd"] is True
    assert public_key_from_peer_id_bytes(multihash) == key.public_key
    # peer_id_bytes uses the even-Y point; even_y() is the secret libp2p must use for it.
    even = key.even_y()
    assert even != key and even.public_key == key.public_key
    assert peer_id_bytes(key.public_key) == multihash.replace(b"\x21\x03", b"\x21\x02", 1)
    assert even.sign(bytes(32), bytes(32)) == key.sign(bytes(32), bytes(32))
    assert even.even_y() is even


def test_public_key_protobuf_vector_is_our_encoding() -> None:
    vec = load_json("libp2p-peerid-secp256k1.json")
    protobuf = bytes.fromhex(vec["secp256k1"]["public_key_protobuf_hex"])
    assert (
        public_key_from_peer_id_bytes(bytes([0, len(protobuf)]) + protobuf).hex()
        == (vec["collector_secp256k1"]["xonly_pubkey_hex"])
    )


def test_peer_id_round_trip() -> None:
    pub = SecretKey.generate().public_key
    pid = peer_id_bytes(pub)
    assert len(pid) == 39 and peer_id_to_base58(pid).startswith("16Uiu2H")
    assert public_key_from_peer_id_bytes(peer_id_from_base58(peer_id_to_base58(pid))) == pub


def test_other_key_types_are_rejected() -> None:
    vec = load_json("libp2p-peerid-secp256k1.json")
    for example in vec["peer_id_string_examples"][1:]:  # the two base58 forms
        mh = peer_id_from_base58(example["peer_id"])
        assert mh.hex() == example["collector_decoded_multihash_hex"]
        with pytest.raises(RemoteProtocolError):
            public_key_from_peer_id_bytes(mh)
    ed25519 = next(v for v in vec["key_protobuf_vectors"] if v["key"] == "ED25519 public key")
    proto = bytes.fromhex(ed25519["protobuf_hex"])
    with pytest.raises(RemoteProtocolError, match="key type 1"):
        public_key_from_peer_id_bytes(bytes([0, len(proto)]) + proto)


GOOD = bytes.fromhex(
    "002508021221037777e994e452c21604f91de093ce415f5432f701dd8cd1a7a6fea0e630bfca99"
)


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"\x00",
        GOOD[:-1],
        GOOD + b"\x00",
        b"\x00\x80",  # truncated varint
        b"\x00" + b"\xff" * 10,  # over-long varint
        GOOD[:2] + b"\x10" + GOOD[3:],  # field 2 first
        GOOD[:6] + b"\x04" + GOOD[7:],  # 04 prefix is not a compressed point
        GOOD[:6] + b"\x02" + b"\xff" * 32,  # x = not on curve
        b"\x00\x23\x08\x02\x12\x20" + GOOD[7:],  # 32-byte data
    ],
)
def test_malformed_peer_ids_are_rejected(bad: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        public_key_from_peer_id_bytes(bad)


@pytest.mark.parametrize("bad", ["", "0OIl", "16Uiu2H\n", "é", "1" * 200])
def test_bad_base58_peer_ids_are_rejected(bad: str) -> None:
    with pytest.raises(KeyFormatError):
        peer_id_from_base58(bad)
