"""Tests for infernet.protocol.receipt and .canonical: CPR encoding, ids and signatures."""

from __future__ import annotations

import contextlib
import hashlib
from decimal import Decimal
from typing import Any

import cbor2
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.protocol.canonical import (
    decode_record,
    encode_record,
    encode_valid_record,
    format_decimal,
)
from infernet.protocol.errors import (
    InfernetError,
    LocalProtocolError,
    RemoteProtocolError,
    SignatureError,
)
from infernet.protocol.frames import Message
from infernet.protocol.keys import SecretKey
from infernet.protocol.pricing import job_value, rates_for_model
from infernet.protocol.receipt import (
    RECEIPT_TYPE,
    CountersignedReceipt,
    Receipt,
    SignedReceipt,
    countersign_receipt,
    decode_countersigned_receipt,
    decode_signed_receipt,
    encode_receipt,
    output_hash,
    prompt_hash,
    rate_from_float,
    receipt_id,
    sign_receipt,
    verify_countersigned_receipt,
    verify_job_receipt,
    verify_receipt,
)

NODE = SecretKey.from_hex("0beebd062ec8735f4243466049d7747ef5d6594ee838de147f8aab842b15e273")
CLIENT = SecretKey.from_hex("e108399bd8424357a710b606ae0c13166d853d327e47a6e5e038197346bdbf45")
COORD = SecretKey.from_hex("4f02eac59266002db5801adc5270700ca69d5b8f761d8732fab2fbf233c90cbd")
PROMPT = (Message(role="user", content="What is the capital of France?"),)


def receipt(**overrides: Any) -> Receipt:
    fields: dict[str, Any] = {
        "job_id": "job_9a3f2c1d",
        "node_pubkey": NODE.public_key.hex(),
        "client_pubkey": CLIENT.public_key.hex(),
        "model": "qwen2.5:14b",
        "weights_hash": "sha256:" + "ab" * 32,
        "input_tokens": 24,
        "output_tokens": 312,
        "completed_at": 1_777_559_023,
        "ttft_ms": 180,
        "tokens_per_s": Decimal("41.5"),
        "value": job_value(24, 312, rates_for_model("qwen2.5:14b")),
        "chain": "base",
        "prompt_hash": prompt_hash(PROMPT),
        "output_hash": output_hash("Paris."),
    }
    fields.update(overrides)
    return Receipt(**fields)


SIGNED = sign_receipt(receipt(), NODE, aux=bytes(32))
COUNTERSIGNED = countersign_receipt(SIGNED, COORD, aux=bytes(32))
TRUSTED = {COORD.public_key}


# --- canonical encoding ------------------------------------------------------------------


def test_body_is_canonical_cbor_with_text_amounts() -> None:
    body = cbor2.loads(SIGNED.body)
    assert body["type"] == RECEIPT_TYPE == "infernet/cpr/1"
    assert body["value"] == "0.00159" and body["tokens_per_s"] == "41.5"
    assert cbor2.dumps(body, canonical=True) == SIGNED.body
    keys = list(body)  # cbor2 keeps the wire order: shortest key first, then bytewise
    assert keys == sorted(keys, key=lambda k: (len(k.encode()), k.encode()))


def test_receipt_id_is_sha256_of_the_body() -> None:
    assert receipt_id(SIGNED.body) == hashlib.sha256(SIGNED.body).hexdigest()
    assert verify_receipt(SIGNED).receipt_id == receipt_id(SIGNED.body)


@pytest.mark.parametrize(
    ("value", "text"),
    [("0", "0"), ("0.000", "0"), ("1.50", "1.5"), ("1E+1", "10"), ("0.00000625", "0.00000625"),
     ("123456789.123456789", "123456789.123456789"), ("1e-18", "0.000000000000000001")],
)
def test_format_decimal(value: str, text: str) -> None:
    assert format_decimal(Decimal(value)) == text


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-1", "-0", "1e-19", "1e16"])
def test_format_decimal_refuses(value: str) -> None:
    with pytest.raises(LocalProtocolError):
        format_decimal(Decimal(value))


def test_same_receipt_same_bytes() -> None:
    assert encode_record(receipt()) == encode_record(receipt(value=Decimal("0.001590")))


def test_non_canonical_encodings_are_refused() -> None:
    body = cbor2.loads(SIGNED.body)
    variants = [
        cbor2.dumps(dict(reversed(body.items()))),  # keys not in canonical order
        cbor2.dumps({**body, "value": "0.001590"}, canonical=True),  # trailing zero
        cbor2.dumps({**body, "value": Decimal("0.00159")}, canonical=True),  # CBOR tag 4
        cbor2.dumps({**body, "input_tokens": 24.0}, canonical=True),  # float
        cbor2.dumps({**body, "extra": 1}, canonical=True),  # unknown field: a new type
        SIGNED.body + b"\x00",  # trailing byte
    ]
    for data in variants:
        with pytest.raises(RemoteProtocolError):
            decode_record(data, Receipt)


def test_floats_are_never_signed() -> None:
    with pytest.raises(LocalProtocolError):
        sign_receipt(receipt(value=0.00159), NODE)


@pytest.mark.parametrize(
    "bad",
    [{"value": Decimal("-1")}, {"value": Decimal("1e-19")}, {"input_tokens": -1},
     {"job_id": ""}, {"chain": "dogecoin"}, {"client_pubkey": "AB" * 32},
     {"model": "m" * 257}, {"currency": "usdc"}],
)
def test_sign_refuses_what_receivers_would_drop(bad: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        sign_receipt(receipt(**bad), NODE)


def test_sign_refuses_a_foreign_node_pubkey() -> None:
    with pytest.raises(LocalProtocolError, match="signing key"):
        sign_receipt(receipt(node_pubkey=CLIENT.public_key.hex()), NODE)


def test_encode_valid_record_is_encode_record_for_valid_input() -> None:
    assert encode_valid_record(receipt()) == encode_record(receipt())


# --- signatures --------------------------------------------------------------------------


def test_verify_node_signed() -> None:
    verified = verify_receipt(SIGNED)
    assert verified.receipt == receipt()
    assert verified.node == NODE.public_key and verified.coordinator is None


def test_verify_countersigned_round_trip() -> None:
    data = encode_receipt(COUNTERSIGNED)
    decoded = decode_countersigned_receipt(data)
    assert decoded == COUNTERSIGNED
    verified = verify_countersigned_receipt(decoded, coordinator_keys=TRUSTED)
    assert verified.coordinator == COORD.public_key and verified.node == NODE.public_key
    assert decode_signed_receipt(encode_receipt(SIGNED)) == SIGNED


def test_countersignature_covers_id_and_node_signature() -> None:
    digest = hashlib.sha256(
        hashlib.sha256(SIGNED.body).digest() + bytes.fromhex(SIGNED.node_sig)).digest()
    assert COORD.public_key.verify(bytes.fromhex(COUNTERSIGNED.coordinator_sig), digest)


def test_untrusted_countersigner_is_refused() -> None:
    with pytest.raises(SignatureError, match="untrusted"):
        verify_countersigned_receipt(COUNTERSIGNED, coordinator_keys={CLIENT.public_key})


def test_node_cannot_forge_a_countersignature_and_coordinator_cannot_forge_a_node() -> None:
    fake_coord = msgspec.structs.replace(COUNTERSIGNED, coordinator_sig=SIGNED.node_sig)
    with pytest.raises(SignatureError, match="coordinator"):
        verify_countersigned_receipt(fake_coord, coordinator_keys=TRUSTED)
    other = sign_receipt(receipt(output_tokens=9999), NODE)
    forged = SignedReceipt(body=other.body, node_sig=SIGNED.node_sig)
    with pytest.raises(SignatureError, match="node"):
        verify_receipt(forged)
    with pytest.raises(SignatureError):
        countersign_receipt(forged, COORD)


def test_countersigning_an_already_verified_receipt() -> None:
    verified = verify_receipt(SIGNED)
    assert countersign_receipt(SIGNED, COORD, aux=bytes(32), verified=verified) == COUNTERSIGNED
    other = verify_receipt(sign_receipt(receipt(output_tokens=9999), NODE))
    with pytest.raises(ValueError, match="not the node-signed receipt"):
        countersign_receipt(SIGNED, COORD, verified=other)


def test_swapping_the_countersigned_node_signature_breaks_both() -> None:
    swapped = msgspec.structs.replace(COUNTERSIGNED, node_sig="00" * 64)
    with pytest.raises(SignatureError):
        verify_countersigned_receipt(swapped, coordinator_keys=TRUSTED)


def test_hashes_and_rate_helpers() -> None:
    expected = hashlib.sha256(
        b'[{"role":"user","content":"What is the capital of France?"}]').hexdigest()
    assert prompt_hash(PROMPT) == expected
    assert output_hash("Paris.") == hashlib.sha256(b"Paris.").hexdigest()
    assert rate_from_float(41.23456) == Decimal("41.235")
    assert rate_from_float(float("nan")) == rate_from_float(-3.0) == Decimal(0)
    with pytest.raises(LocalProtocolError):
        output_hash("\ud800")
    with pytest.raises(LocalProtocolError):
        prompt_hash([Message(role="user", content="\ud800")])


# --- mutation and fuzz -------------------------------------------------------------------

ENCODED = encode_receipt(COUNTERSIGNED)


def _check(data: bytes) -> None:
    verify_countersigned_receipt(decode_countersigned_receipt(data), coordinator_keys=TRUSTED)


@settings(max_examples=600, deadline=None, database=None)
@given(st.integers(0, len(ENCODED) - 1), st.integers(0, 255))
def test_any_single_byte_mutation_is_rejected(pos: int, byte: int) -> None:
    if ENCODED[pos] == byte:
        return
    mutated = bytearray(ENCODED)
    mutated[pos] = byte
    with pytest.raises((RemoteProtocolError, SignatureError)):
        _check(bytes(mutated))


@settings(max_examples=600, deadline=None, database=None)
@given(st.integers(0, len(SIGNED.body) - 1), st.integers(0, 255))
def test_any_single_byte_mutation_of_the_body_is_rejected(pos: int, byte: int) -> None:
    if SIGNED.body[pos] == byte:
        return
    body = bytearray(SIGNED.body)
    body[pos] = byte
    with pytest.raises((RemoteProtocolError, SignatureError)):
        verify_receipt(SignedReceipt(body=bytes(body), node_sig=SIGNED.node_sig))


@settings(max_examples=400, deadline=None, database=None)
@given(st.binary(max_size=600))
def test_decoders_on_arbitrary_bytes_raise_only_project_errors(data: bytes) -> None:
    for decode in (decode_signed_receipt, decode_countersigned_receipt):
        with contextlib.suppress(InfernetError):
            decode(data)
    with contextlib.suppress(InfernetError):
        verify_receipt(SignedReceipt(body=data, node_sig=SIGNED.node_sig))


@settings(max_examples=200, deadline=None, database=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8)
                    | st.binary(max_size=8) | st.floats(),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=20))
def test_any_cbor_value_decodes_or_raises_remote_protocol_error(value: object) -> None:
    data = cbor2.dumps(value, canonical=True)
    for record_type in (Receipt, SignedReceipt, CountersignedReceipt):
        with contextlib.suppress(RemoteProtocolError):
            decode_record(data, record_type)


@settings(max_examples=100, deadline=None, database=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1),
       st.decimals(min_value=0, max_value=10**9, places=6, allow_nan=False))
def test_sign_verify_round_trip(inp: int, out: int, value: Decimal) -> None:
    signed = sign_receipt(receipt(input_tokens=inp, output_tokens=out, value=value), NODE)
    got = verify_receipt(decode_signed_receipt(encode_receipt(signed))).receipt
    assert (got.input_tokens, got.output_tokens, got.value) == (inp, out, value)


def test_spec_example_vector() -> None:
    """specs/receipts.md §6: a second implementation can check itself against these values."""
    signed = sign_receipt(receipt(client_pubkey="", weights_hash="", ttft_ms=180), NODE,
                          aux=bytes(32))
    assert NODE.public_key.hex().startswith("611df01b")
    assert COORD.public_key.hex().startswith("18b1a759")
    assert receipt_id(signed.body) == (
        "2350af82f40f52fbd7e8738ba0f99c076add41fc2837682e50bd8cfd57511690")
    assert signed.node_sig == (
        "1cc45b3974e16805c495254bc8a8a676bb3ccc1fc2e8e243e1a81cd6e1ceb13f"
        "83dd0326549b616a42f0918fffb365cc30ce0fc5acf32bf395be3329800d65ec")
    assert countersign_receipt(signed, COORD, aux=bytes(32)).coordinator_sig == (
        "45cf73d6efb8e8bab92fd9dc0e088a7e274da4662a61e8b63e083cec38864d7b"
        "8f4a5befe103850efdbec13073f2394841fc06ee24f926f9c48c3ace7be3fc70")
    assert signed.body.startswith(bytes.fromhex("b06474797065"))


def test_a_job_receipt_matching_what_the_client_sent_and_received_verifies() -> None:
    verified = verify_job_receipt(SIGNED, job_id="job_9a3f2c1d", node_pubkey=NODE.public_key.hex(),
                                  messages=PROMPT, output="Paris.")
    assert verified.receipt_id == receipt_id(SIGNED.body)
    anyone = verify_job_receipt(SIGNED, job_id="job_9a3f2c1d", node_pubkey=None,
                                messages=PROMPT, output="Paris.")  # any signer, if it checks
    assert anyone.node == NODE.public_key


@pytest.mark.parametrize(("field", "change"), [
    ("job_id", {"job_id": "another"}),
    ("node_pubkey", {"node_pubkey": CLIENT.public_key.hex()}),
    ("prompt_hash", {"messages": (Message(role="user", content="What is 2+2?"),)}),
    ("output_hash", {"output": "Lyon."}),
])
def test_a_job_receipt_that_differs_from_the_job_names_the_field(
    field: str, change: dict[str, Any]
) -> None:
    job: dict[str, Any] = {"job_id": "job_9a3f2c1d", "node_pubkey": NODE.public_key.hex(),
                           "messages": PROMPT, "output": "Paris."}
    job.update(change)
    with pytest.raises(RemoteProtocolError, match=field):
        verify_job_receipt(SIGNED, **job)
