"""Tests for infernet.protocol.delegation: the user → node → model chain, rotation, commands."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernet.protocol.delegation import (
    ROTATION_GRACE_S,
    DelegationError,
    KeyRotation,
    ModelDelegation,
    NodeAuthority,
    NodeDelegation,
    OwnerCommand,
    OwnerCommandVerifier,
    ResponseMetadata,
    Signed,
    check_rotation_grace,
    decode_signed,
    encode_signed,
    sign_record,
    verify_model_delegation,
    verify_node_authority,
    verify_receipt_signer,
    verify_response,
    verify_signed,
)
from infernet.protocol.errors import (
    InfernetError,
    LocalProtocolError,
    RemoteProtocolError,
    SignatureError,
)
from infernet.protocol.keys import SecretKey

USER = SecretKey.from_hex("0beebd062ec8735f4243466049d7747ef5d6594ee838de147f8aab842b15e273")
NODE = SecretKey.from_hex("e108399bd8424357a710b606ae0c13166d853d327e47a6e5e038197346bdbf45")
NODE2 = SecretKey.from_hex("4f02eac59266002db5801adc5270700ca69d5b8f761d8732fab2fbf233c90cbd")
MODEL = SecretKey.from_hex("67dea2ed018072d675f5415ecfaed7d2597555e202d85b3d65ea4e58d2d92ffa")
T = 1_800_000_000
ALL_SCOPES: Any = ("serve", "receipts", "model_keys", "commands")


def node_delegation(**overrides: Any) -> Signed[NodeDelegation]:
    fields: dict[str, Any] = {
        "user_pubkey": USER.public_key.hex(),
        "node_pubkey": NODE.public_key.hex(),
        "scope": ALL_SCOPES,
        "issued_at": T,
        "expires_at": T + 365 * 86400,
    }
    fields.update(overrides)
    return sign_record(NodeDelegation(**fields), USER, aux=bytes(32))


def rotation(
    old: SecretKey = NODE, new: SecretKey = NODE2, at: int = T + 1000
) -> Signed[KeyRotation]:
    record = KeyRotation(old_pubkey=old.public_key.hex(), new_pubkey=new.public_key.hex(),
                         rotated_at=at)
    return sign_record(record, old, aux=bytes(32))


def authority(*, rotations: tuple[Signed[KeyRotation], ...] = (), now: int = T + 10,
              **overrides: Any) -> NodeAuthority:
    return verify_node_authority(node_delegation(**overrides), user=USER.public_key, now=now,
                                 rotations=rotations)


def model_delegation(signer: SecretKey = NODE, **overrides: Any) -> Signed[ModelDelegation]:
    fields: dict[str, Any] = {
        "node_pubkey": signer.public_key.hex(),
        "model_pubkey": MODEL.public_key.hex(),
        "model": "qwen2.5:14b",
        "weights_hash": "sha256:" + "cd" * 32,
        "issued_at": T,
        "expires_at": T + 30 * 86400,
    }
    fields.update(overrides)
    return sign_record(ModelDelegation(**fields), signer, aux=bytes(32))


def response(**overrides: Any) -> Signed[ResponseMetadata]:
    fields: dict[str, Any] = {
        "model_pubkey": MODEL.public_key.hex(),
        "node_pubkey": NODE.public_key.hex(),
        "job_id": "job-1",
        "model": "qwen2.5:14b",
        "weights_hash": "sha256:" + "cd" * 32,
        "output_hash": "ef" * 32,
        "receipt_id": "12" * 32,
        "created_at": T + 20,
    }
    fields.update(overrides)
    return sign_record(ResponseMetadata(**fields), MODEL, aux=bytes(32))


def command(nonce: str = "ab" * 16, **overrides: Any) -> Signed[OwnerCommand]:
    fields: dict[str, Any] = {
        "action": "model_install",
        "user_pubkey": USER.public_key.hex(),
        "node_pubkey": NODE.public_key.hex(),
        "model": "qwen2.5:7b",
        "issued_at": T + 5,
        "nonce": nonce,
    }
    fields.update(overrides)
    return sign_record(OwnerCommand(**fields), USER, aux=bytes(32))


# --- records -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "record_type", "tag"),
    [
        (node_delegation, NodeDelegation, "infernet/delegation/node/1"),
        (rotation, KeyRotation, "infernet/rotation/1"),
        (model_delegation, ModelDelegation, "infernet/delegation/model/1"),
        (response, ResponseMetadata, "infernet/response/1"),
        (command, OwnerCommand, "infernet/command/1"),
    ],
)
def test_every_record_round_trips_and_verifies(make: Any, record_type: Any, tag: str) -> None:
    signed = make()
    data = encode_signed(signed)
    assert cbor2.loads(data)["record"]["type"] == tag
    decoded = decode_signed(data, record_type)
    assert decoded == signed
    assert verify_signed(decoded) == signed.record


def test_a_record_of_one_kind_never_decodes_as_another() -> None:
    data = encode_signed(node_delegation())
    for other in (KeyRotation, ModelDelegation, ResponseMetadata, OwnerCommand):
        with pytest.raises(RemoteProtocolError):
            decode_signed(data, other)


def test_sign_record_refuses_the_wrong_key_and_bad_fields() -> None:
    with pytest.raises(LocalProtocolError, match="signer"):
        sign_record(node_delegation().record, NODE)
    with pytest.raises(LocalProtocolError):
        node_delegation(scope=())
    with pytest.raises(LocalProtocolError):
        node_delegation(scope=("root",))


def test_tampered_record_is_a_bad_signature() -> None:
    signed = node_delegation()
    widened = msgspec.structs.replace(signed.record, expires_at=T + 10 * 365 * 86400)
    with pytest.raises(SignatureError, match="NodeDelegation"):
        verify_signed(Signed(record=widened, sig=signed.sig))


# --- user → node -------------------------------------------------------------------------


def test_node_authority_without_rotation() -> None:
    auth = authority()
    assert auth.current_key == NODE.public_key and auth.retired == ()
    assert auth.user == USER.public_key


def test_delegation_from_another_user_is_refused() -> None:
    with pytest.raises(DelegationError, match="another user"):
        verify_node_authority(node_delegation(), user=NODE.public_key, now=T)


@pytest.mark.parametrize(("now", "match"), [(T - 61, "not valid yet"),
                                            (T + 365 * 86400, "expired")])
def test_delegation_time_bounds(now: int, match: str) -> None:
    with pytest.raises(DelegationError, match=match):
        authority(now=now)
    authority(now=T - 60)  # clock skew allowance


def test_scope_is_enforced() -> None:
    signed = node_delegation(scope=("serve",))
    verify_node_authority(signed, user=USER.public_key, now=T, scope="serve")
    with pytest.raises(DelegationError, match="receipts"):
        verify_node_authority(signed, user=USER.public_key, now=T, scope="receipts")


# --- rotation ----------------------------------------------------------------------------


def test_rotation_moves_authority_to_the_new_key() -> None:
    auth = authority(rotations=(rotation(),), now=T + 2000)
    assert auth.current_key == NODE2.public_key
    assert auth.retired == ((NODE.public_key, T + 1000),)


def test_old_key_receipts_have_a_24_hour_grace_period() -> None:
    auth = authority(rotations=(rotation(),), now=T + 2000)
    verify_receipt_signer(auth, NODE2.public_key, completed_at=T + 1500, now=T + 2000)
    verify_receipt_signer(auth, NODE.public_key, completed_at=T + 999,
                          now=T + 1000 + ROTATION_GRACE_S)
    with pytest.raises(DelegationError, match="grace period"):
        verify_receipt_signer(auth, NODE.public_key, completed_at=T + 999,
                              now=T + 1001 + ROTATION_GRACE_S)
    with pytest.raises(DelegationError, match="after it was rotated"):
        verify_receipt_signer(auth, NODE.public_key, completed_at=T + 1001, now=T + 2000)
    with pytest.raises(DelegationError, match="not a key of this node"):
        verify_receipt_signer(auth, MODEL.public_key, completed_at=T, now=T + 2000)


def test_the_grace_rule_on_its_own_matches_the_chain_check() -> None:
    rotated_at = T + 1000
    check_rotation_grace(rotated_at, completed_at=rotated_at, now=rotated_at + ROTATION_GRACE_S)
    with pytest.raises(DelegationError, match="grace period"):
        check_rotation_grace(rotated_at, completed_at=T, now=rotated_at + ROTATION_GRACE_S + 1)
    with pytest.raises(DelegationError, match="after it was rotated"):
        check_rotation_grace(rotated_at, completed_at=rotated_at + 1, now=rotated_at + 1)


def test_receipts_need_the_receipts_scope() -> None:
    auth = authority(scope=("serve",))
    with pytest.raises(DelegationError, match="receipts"):
        verify_receipt_signer(auth, NODE.public_key, completed_at=T, now=T)


def test_a_chain_of_rotations() -> None:
    third = SecretKey.generate()
    auth = authority(rotations=(rotation(), rotation(NODE2, third, T + 5000)), now=T + 6000)
    assert auth.current_key == third.public_key
    assert [k for k, _ in auth.retired] == [NODE.public_key, NODE2.public_key]


@pytest.mark.parametrize(
    ("rotations", "match"),
    [
        (lambda: (rotation(NODE2, MODEL),), "broken"),  # does not start at the node key
        (lambda: (rotation(), rotation(NODE, MODEL, T + 2000)), "broken"),  # forks old key
        (lambda: (rotation(), rotation(NODE2, MODEL, T + 500)), "backwards"),
        (lambda: (rotation(at=T - 1),), "backwards"),
        (lambda: (rotation(NODE, NODE),), "backwards"),
        (lambda: (rotation(at=T + 400 * 86400),), "expired"),
    ],
)
def test_broken_rotation_chains(rotations: Any, match: str) -> None:
    with pytest.raises(DelegationError, match=match):
        authority(rotations=rotations(), now=T + 3000)


def test_rotation_in_the_future_is_refused() -> None:
    with pytest.raises(DelegationError, match="future"):
        authority(rotations=(rotation(at=T + 5000),), now=T + 100)


def test_rotation_signed_by_someone_else_is_a_bad_signature() -> None:
    forged = Signed(record=rotation().record, sig=rotation(NODE2, MODEL).sig)
    with pytest.raises(SignatureError):
        authority(rotations=(forged,), now=T + 2000)


# --- node → model → response -------------------------------------------------------------


def test_full_chain_user_node_model_response() -> None:
    auth = authority(now=T + 20)
    model = verify_model_delegation(model_delegation(), authority=auth, now=T + 20)
    meta = verify_response(response(), model_delegation=model, now=T + 20)
    assert meta.job_id == "job-1" and model.model == "qwen2.5:14b"


def test_model_delegation_must_come_from_the_current_node_key() -> None:
    auth = authority(rotations=(rotation(),), now=T + 2000)
    with pytest.raises(DelegationError, match="current key"):
        verify_model_delegation(model_delegation(NODE), authority=auth, now=T + 2000)
    verify_model_delegation(model_delegation(NODE2), authority=auth, now=T + 2000)


def test_model_delegation_scope_and_time() -> None:
    with pytest.raises(DelegationError, match="model_keys"):
        verify_model_delegation(model_delegation(), authority=authority(scope=("serve",)),
                                now=T)
    with pytest.raises(DelegationError, match="expired"):
        verify_model_delegation(model_delegation(), authority=authority(),
                                now=T + 31 * 86400)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [({"model": "llama3:8b"}, "another model"), ({"weights_hash": "sha256:" + "00" * 32},
     "other weights"), ({"node_pubkey": NODE2.public_key.hex()}, "another node"),
     ({"created_at": T + 1000}, "future")],
)
def test_response_must_match_its_model_key(overrides: dict[str, Any], match: str) -> None:
    model = verify_model_delegation(model_delegation(), authority=authority(), now=T + 20)
    with pytest.raises(DelegationError, match=match):
        verify_response(response(**overrides), model_delegation=model, now=T + 20)


def test_response_by_another_model_key() -> None:
    other = SecretKey.generate()
    meta = msgspec.structs.replace(response().record, model_pubkey=other.public_key.hex())
    model = verify_model_delegation(model_delegation(), authority=authority(), now=T + 20)
    with pytest.raises(DelegationError, match="another model key"):
        verify_response(sign_record(meta, other), model_delegation=model, now=T + 20)


# --- owner commands ----------------------------------------------------------------------


def test_owner_command_runs_once() -> None:
    verifier = OwnerCommandVerifier()
    auth = authority()
    assert verifier.verify(command(), authority=auth, now=T + 10).action == "model_install"
    with pytest.raises(DelegationError, match="already run"):
        verifier.verify(command(), authority=auth, now=T + 11)
    remove = command("cd" * 16, action="model_remove")
    assert verifier.verify(remove, authority=auth, now=T + 12).action == "model_remove"
    assert verifier.statistics().entries == 2


@pytest.mark.parametrize(
    ("signed", "now", "match"),
    [
        (lambda: command(issued_at=T + 100), T, "future"),
        (lambda: command(issued_at=T), T + 3601, "too old"),
        (lambda: command(node_pubkey=NODE2.public_key.hex()), T + 10, "another node"),
    ],
)
def test_owner_command_refusals(signed: Any, now: int, match: str) -> None:
    with pytest.raises(DelegationError, match=match):
        OwnerCommandVerifier().verify(signed(), authority=authority(), now=now)


def test_owner_command_from_another_user_or_without_scope() -> None:
    stranger = SecretKey.generate()
    record = msgspec.structs.replace(command().record, user_pubkey=stranger.public_key.hex())
    with pytest.raises(DelegationError, match="not from the user"):
        OwnerCommandVerifier().verify(sign_record(record, stranger), authority=authority(),
                                      now=T + 10)
    with pytest.raises(DelegationError, match="commands"):
        OwnerCommandVerifier().verify(command(), authority=authority(scope=("serve",)),
                                      now=T + 10)


def test_owner_command_follows_a_rotation() -> None:
    auth = authority(rotations=(rotation(),), now=T + 2000)
    signed = command(node_pubkey=NODE2.public_key.hex(), issued_at=T + 1990)
    assert OwnerCommandVerifier().verify(signed, authority=auth, now=T + 2000).model


def test_owner_command_nonce_memory_is_bounded() -> None:
    verifier = OwnerCommandVerifier(max_nonces=1)
    verifier.verify(command("01" * 16), authority=authority(), now=T + 10)
    with pytest.raises(DelegationError, match="in flight"):
        verifier.verify(command("02" * 16), authority=authority(), now=T + 10)


# --- mutation and fuzz -------------------------------------------------------------------

ENCODED = encode_signed(command())


@settings(max_examples=500, deadline=None, database=None)
@given(st.integers(0, len(ENCODED) - 1), st.integers(0, 255))
def test_any_single_byte_mutation_of_a_command_is_rejected(pos: int, byte: int) -> None:
    if ENCODED[pos] == byte:
        return
    mutated = bytearray(ENCODED)
    mutated[pos] = byte
    with pytest.raises((RemoteProtocolError, SignatureError)):
        OwnerCommandVerifier().verify(decode_signed(bytes(mutated), OwnerCommand),
                                      authority=authority(), now=T + 10)


@settings(max_examples=300, deadline=None, database=None)
@given(st.binary(max_size=400))
def test_decode_signed_on_arbitrary_bytes_raises_only_project_errors(data: bytes) -> None:
    for record_type in (NodeDelegation, KeyRotation, ModelDelegation, ResponseMetadata,
                        OwnerCommand):
        with contextlib.suppress(InfernetError):
            verify_signed(decode_signed(data, record_type))  # type: ignore[type-var]
