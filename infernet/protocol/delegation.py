"""The key hierarchy (IPIP-0028): user → node → model keys, rotation, and owner commands.

Owns: the signed records of ``specs/keys.md`` §3–§6 and their verification, with time as an
argument:

- ``NodeDelegation``: the user key authorizes a node key, with a scope and an expiry;
- ``KeyRotation``: the old node key hands over to a new one; the old key's receipts stay
  redeemable for ``ROTATION_GRACE_S`` (24 h) after the rotation;
- ``ModelDelegation``: the node key authorizes one model key for one model (and weights);
- ``ResponseMetadata``: a model key signs what it produced for a job;
- ``OwnerCommand``: the delegating user key orders ``model_install`` / ``model_remove``.

Every record is canonical CBOR (``canonical``) with its own type tag, so a signature over one
kind can never be replayed as another; ``Signed[R]`` carries the record and a BIP-340
signature over SHA-256 of its encoding by the key the record names as ``signer``.

Invariants: ``verify_*`` return only after every signature, key link, scope and time bound
checked; they raise ``DelegationError`` (a ``SignatureError``, code ``unauthorized``) or
``SignatureError`` and nothing else for records of any content.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Final, Generic, Literal, TypeVar, cast

import msgspec

from infernet.protocol.canonical import (
    decode_record,
    encode_record,
    encode_valid_record,
    record_digest,
    verify_digest,
)
from infernet.protocol.errors import LocalProtocolError, SignatureError
from infernet.protocol.keys import PublicKey, SecretKey
from infernet.protocol.replay import ReplayCache, ReplayCacheFull, ReplayStatistics

__all__ = [
    "DEFAULT_COMMAND_MAX_AGE_S",
    "MAX_CLOCK_SKEW_S",
    "ROTATION_GRACE_S",
    "DelegationError",
    "KeyRotation",
    "ModelDelegation",
    "NodeAuthority",
    "NodeDelegation",
    "OwnerCommand",
    "OwnerCommandVerifier",
    "ResponseMetadata",
    "Scope",
    "Signed",
    "check_rotation_grace",
    "decode_signed",
    "encode_signed",
    "sign_record",
    "verify_model_delegation",
    "verify_node_authority",
    "verify_receipt_signer",
    "verify_response",
    "verify_signed",
]

ROTATION_GRACE_S: Final = 24 * 3600
MAX_CLOCK_SKEW_S: Final = 60
DEFAULT_COMMAND_MAX_AGE_S: Final = 3600
MAX_ROTATIONS: Final = 16

Scope = Literal["serve", "receipts", "model_keys", "commands"]
"""What a node key may do for its user: take jobs, sign payable receipts, delegate model keys,
obey owner commands."""

_Hex64 = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{64}\Z")]
_Hex128 = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{128}\Z")]
_Nonce = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{32}\Z")]
_UnixTime = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]
_Model = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
_WeightsHash = Annotated[str, msgspec.Meta(max_length=128)]


class DelegationError(SignatureError):
    """Raised when a key chain does not authorize an action: wrong link, scope, time or replay.

    Refuse the action; the message says which link failed.
    """


class NodeDelegation(msgspec.Struct, frozen=True, kw_only=True,
                     tag="infernet/delegation/node/1", tag_field="type"):
    """User key → node key: "this node acts for me, for ``scope``, until ``expires_at``"."""

    user_pubkey: _Hex64
    node_pubkey: _Hex64
    scope: Annotated[tuple[Scope, ...], msgspec.Meta(min_length=1, max_length=8)]
    issued_at: _UnixTime
    expires_at: _UnixTime

    @property
    def signer(self) -> str:
        return self.user_pubkey


class KeyRotation(msgspec.Struct, frozen=True, kw_only=True,
                  tag="infernet/rotation/1", tag_field="type"):
    """Old node key → new node key, signed by the old key at ``rotated_at``."""

    old_pubkey: _Hex64
    new_pubkey: _Hex64
    rotated_at: _UnixTime

    @property
    def signer(self) -> str:
        return self.old_pubkey


class ModelDelegation(msgspec.Struct, frozen=True, kw_only=True,
                      tag="infernet/delegation/model/1", tag_field="type"):
    """Node key → model key: "this key speaks for ``model`` (these weights) on this node"."""

    node_pubkey: _Hex64
    model_pubkey: _Hex64
    model: _Model
    weights_hash: _WeightsHash = ""
    issued_at: _UnixTime
    expires_at: _UnixTime

    @property
    def signer(self) -> str:
        return self.node_pubkey


class ResponseMetadata(msgspec.Struct, frozen=True, kw_only=True,
                       tag="infernet/response/1", tag_field="type"):
    """What a model key states about one answer: served-by provenance a client can check."""

    model_pubkey: _Hex64
    node_pubkey: _Hex64
    job_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    model: _Model
    weights_hash: _WeightsHash = ""
    output_hash: Annotated[str, msgspec.Meta(pattern=r"\A(?:[0-9a-f]{64})?\Z")] = ""
    receipt_id: Annotated[str, msgspec.Meta(pattern=r"\A(?:[0-9a-f]{64})?\Z")] = ""
    created_at: _UnixTime

    @property
    def signer(self) -> str:
        return self.model_pubkey


class OwnerCommand(msgspec.Struct, frozen=True, kw_only=True,
                   tag="infernet/command/1", tag_field="type"):
    """User key → node: install or remove a model; ``nonce`` makes each command single-use."""

    action: Literal["model_install", "model_remove"]
    user_pubkey: _Hex64
    node_pubkey: _Hex64
    model: _Model
    issued_at: _UnixTime
    nonce: _Nonce

    @property
    def signer(self) -> str:
        return self.user_pubkey


R = TypeVar("R", NodeDelegation, KeyRotation, ModelDelegation, ResponseMetadata, OwnerCommand)


class Signed(msgspec.Struct, Generic[R], frozen=True, kw_only=True):
    """A record and the BIP-340 signature of SHA-256(canonical CBOR of it) by ``record.signer``."""

    record: R
    sig: _Hex128


def sign_record(record: R, key: SecretKey, aux: bytes | None = None) -> Signed[R]:
    """Sign ``record`` with the key it names as signer.

    Raises:
        LocalProtocolError: ``key`` is not ``record.signer``, or a field breaks a bound.
    """
    if record.signer != key.public_key.hex():
        raise LocalProtocolError(f"{type(record).__name__} must be signed by its signer key")
    digest = record_digest(encode_valid_record(record))
    return Signed(record=record, sig=key.sign(digest, aux).hex())


def verify_signed(signed: Signed[R]) -> R:
    """Check the signature of one record by the key it names; return the record.

    Raises:
        SignatureError: "bad <record type> signature".
    """
    record = signed.record
    try:
        digest = record_digest(encode_record(record))
    except LocalProtocolError:
        raise SignatureError(f"bad {type(record).__name__} signature") from None
    verify_digest(digest, record.signer, signed.sig, type(record).__name__)
    return record


def encode_signed(signed: Signed[R]) -> bytes:
    """Return the canonical CBOR of a signed record (``{"record": {...}, "sig": hex}``).

    Raises:
        LocalProtocolError: a field breaks the encoding rules (a float, a bad amount).
    """
    return encode_record(signed)


def decode_signed(data: bytes, record_type: type[R]) -> Signed[R]:
    """Parse a signed record of ``record_type`` (unverified: call a ``verify_*``).

    Raises:
        RemoteProtocolError: oversized, not canonical CBOR, the wrong type tag or shape.
    """
    # msgspec needs the parametrized type to check the tag; mypy cannot spell Signed[<var>].
    signed_type = cast("type[Signed[R]]", Signed[record_type])  # type: ignore[valid-type,redundant-cast]
    return decode_record(data, signed_type)


def _check_window(issued_at: int, expires_at: int, now: int, what: str) -> None:
    if issued_at > now + MAX_CLOCK_SKEW_S:
        raise DelegationError(f"{what} is not valid yet")
    if now >= expires_at:
        raise DelegationError(f"{what} expired")


@dataclass(frozen=True, slots=True)
class NodeAuthority:
    """The outcome of a verified user → node chain at one instant."""

    user: PublicKey
    delegation: NodeDelegation
    current_key: PublicKey
    retired: tuple[tuple[PublicKey, int], ...]  # (old key, rotated_at), oldest first


def _follow_rotations(
    delegation: NodeDelegation, rotations: Sequence[Signed[KeyRotation]]
) -> tuple[str, tuple[tuple[PublicKey, int], ...]]:
    if len(rotations) > MAX_ROTATIONS:
        raise DelegationError("rotation chain is too long")
    current, last_at = delegation.node_pubkey, delegation.issued_at
    retired: list[tuple[PublicKey, int]] = []
    for signed in rotations:
        rotation = verify_signed(signed)
        if rotation.old_pubkey != current:
            raise DelegationError("rotation chain is broken: old key is not the current key")
        if rotation.new_pubkey == current or rotation.rotated_at < last_at:
            raise DelegationError("rotation chain goes backwards")
        if rotation.rotated_at >= delegation.expires_at:
            raise DelegationError("rotation after the delegation expired")
        retired.append((PublicKey.from_hex(current), rotation.rotated_at))
        current, last_at = rotation.new_pubkey, rotation.rotated_at
    return current, tuple(retired)


def verify_node_authority(
    signed: Signed[NodeDelegation],
    *,
    user: PublicKey,
    now: int,
    rotations: Sequence[Signed[KeyRotation]] = (),
    scope: Scope | None = None,
) -> NodeAuthority:
    """Verify user → node delegation (and rotations) at ``now``; return the current node key.

    Raises:
        SignatureError: a bad delegation or rotation signature.
        DelegationError: another user's delegation, not yet valid or expired, ``scope``
            not granted, or a broken rotation chain.
    """
    delegation = verify_signed(signed)
    if delegation.user_pubkey != user.hex():
        raise DelegationError("delegation is from another user key")
    _check_window(delegation.issued_at, delegation.expires_at, now, "node delegation")
    if scope is not None and scope not in delegation.scope:
        raise DelegationError(f"node delegation does not grant {scope!r}")
    current, retired = _follow_rotations(delegation, rotations)
    if any(at > now + MAX_CLOCK_SKEW_S for _, at in retired):
        raise DelegationError("rotation is dated in the future")
    return NodeAuthority(user=user, delegation=delegation,
                         current_key=PublicKey.from_hex(current), retired=retired)


def verify_receipt_signer(
    authority: NodeAuthority, signer: PublicKey, *, completed_at: int, now: int
) -> None:
    """Check that ``signer`` may sign a payable receipt of a job completed at ``completed_at``.

    The current key may; a rotated-away key may for jobs it completed before its rotation,
    until ``ROTATION_GRACE_S`` after the rotation.

    Raises:
        DelegationError: no "receipts" scope, a key outside the chain, or a retired key
            past its grace period or used after its rotation.
    """
    if "receipts" not in authority.delegation.scope:
        raise DelegationError("node delegation does not grant 'receipts'")
    if signer == authority.current_key:
        return
    for old_key, rotated_at in authority.retired:
        if signer == old_key:
            check_rotation_grace(rotated_at, completed_at=completed_at, now=now)
            return
    raise DelegationError("receipt signer is not a key of this node")


def check_rotation_grace(rotated_at: int, *, completed_at: int, now: int) -> None:
    """Check the grace of a key rotated away at ``rotated_at`` for one of its receipts.

    The rule of `verify_receipt_signer` for a retired key, on its own: a node that knows its
    own chain uses it to stop offering receipts no coordinator will take.

    Raises:
        DelegationError: the job completed after the rotation, or ``now`` is past
            ``rotated_at + ROTATION_GRACE_S``.
    """
    if completed_at > rotated_at:
        raise DelegationError("receipt signed by a key after it was rotated away")
    if now > rotated_at + ROTATION_GRACE_S:
        raise DelegationError("rotated key's 24 h grace period is over")


def verify_model_delegation(
    signed: Signed[ModelDelegation], *, authority: NodeAuthority, now: int
) -> ModelDelegation:
    """Verify node → model delegation against a verified node authority at ``now``.

    Raises:
        SignatureError: a bad model delegation signature.
        DelegationError: signed by a key that is not the node's current key, no
            "model_keys" scope, or not valid at ``now``.
    """
    delegation = verify_signed(signed)
    if delegation.node_pubkey != authority.current_key.hex():
        raise DelegationError("model key is not delegated by the node's current key")
    if "model_keys" not in authority.delegation.scope:
        raise DelegationError("node delegation does not grant 'model_keys'")
    _check_window(delegation.issued_at, delegation.expires_at, now, "model delegation")
    return delegation


def verify_response(
    signed: Signed[ResponseMetadata], *, model_delegation: ModelDelegation, now: int
) -> ResponseMetadata:
    """Verify a model key's response metadata against its (verified) model delegation.

    Raises:
        SignatureError: a bad response signature.
        DelegationError: another model key, node, model or weights, or dated past ``now``.
    """
    meta = verify_signed(signed)
    if meta.model_pubkey != model_delegation.model_pubkey:
        raise DelegationError("response is signed by another model key")
    if meta.node_pubkey != model_delegation.node_pubkey:
        raise DelegationError("response names another node")
    if meta.model != model_delegation.model:
        raise DelegationError("response names another model than the key serves")
    if model_delegation.weights_hash and meta.weights_hash != model_delegation.weights_hash:
        raise DelegationError("response names other weights than the key serves")
    if meta.created_at > now + MAX_CLOCK_SKEW_S:
        raise DelegationError("response is dated in the future")
    return meta


class OwnerCommandVerifier:
    """Checks owner commands on a node; keeps used nonces so each command runs once."""

    def __init__(
        self,
        *,
        max_age_s: int = DEFAULT_COMMAND_MAX_AGE_S,
        max_future_s: int = MAX_CLOCK_SKEW_S,
        max_nonces: int = 10_000,
    ) -> None:
        """Create a verifier with an empty nonce memory.

        Raises:
            InfernetError: a bound that is not positive.
        """
        self._max_age: Final = max_age_s
        self._max_future: Final = max_future_s
        self._nonces: Final = ReplayCache(ttl=max_age_s + max_future_s, max_entries=max_nonces)

    def verify(
        self, signed: Signed[OwnerCommand], *, authority: NodeAuthority, now: int
    ) -> OwnerCommand:
        """Accept a command for this node from its delegating user, once, while fresh.

        Raises:
            SignatureError: a bad command signature.
            DelegationError: another user or node, no "commands" scope, too old, dated in
                the future, already run, or too many commands in flight.
        """
        command = verify_signed(signed)
        if command.user_pubkey != authority.user.hex():
            raise DelegationError("command is not from the user that delegated this node")
        if command.node_pubkey != authority.current_key.hex():
            raise DelegationError("command is for another node key")
        if "commands" not in authority.delegation.scope:
            raise DelegationError("node delegation does not grant 'commands'")
        if command.issued_at > now + self._max_future:
            raise DelegationError("command is dated in the future")
        if command.issued_at < now - self._max_age:
            raise DelegationError("command is too old")
        replay_key = f"{command.node_pubkey}:{command.nonce}"
        if self._nonces.seen(replay_key, now):
            raise DelegationError("command was already run (nonce reused)")
        try:
            self._nonces.add(replay_key, now=now, stale_at=command.issued_at + self._max_age)
        except ReplayCacheFull:
            raise DelegationError("too many commands in flight; retry later") from None
        return command

    def statistics(self) -> ReplayStatistics:
        """Return a snapshot of the nonce memory."""
        return self._nonces.statistics()
