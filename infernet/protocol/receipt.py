"""Compute Payment Receipts (CPR): what a node did for a job, signed by it and countersigned.

Owns: the ``Receipt`` record, its canonical encoding and id, the node signature, the
coordinator countersignature and offline verification of both (DESIGN.md §3 "Receipts";
``specs/receipts.md``).

Construction:

- ``body`` = canonical CBOR of the ``Receipt`` (``canonical.encode_record``, type tag
  ``"infernet/cpr/1"``); ``receipt_id`` = hex SHA-256 of ``body``.
- ``node_sig`` = BIP-340 by ``receipt.node_pubkey`` over the 32-byte receipt id.
- ``coordinator_sig`` = BIP-340 by the coordinator key over
  SHA-256(receipt id (32 bytes) ‖ node_sig (64 bytes)).

Invariants:

- Signed and countersigned receipts are different types; verification returns a
  ``VerifiedReceipt`` only when every signature checks.
- Amounts are ``Decimal`` and travel as canonical decimal strings; no float is ever signed.
- Decoders raise nothing but ``RemoteProtocolError`` (shape) or ``SignatureError``
  (signatures), whatever bytes they are given.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Final, NewType, Protocol

import msgspec

from infernet.protocol.canonical import (
    decode_record,
    encode_record,
    encode_valid_record,
    record_digest,
    verify_digest,
)
from infernet.protocol.errors import LocalProtocolError, RemoteProtocolError, SignatureError
from infernet.protocol.keys import PublicKey, SecretKey
from infernet.protocol.pricing import Chain

__all__ = [
    "MAX_RECEIPT_SIZE",
    "RECEIPT_TYPE",
    "CountersignedReceipt",
    "Receipt",
    "ReceiptId",
    "SignedReceipt",
    "VerifiedReceipt",
    "countersign_receipt",
    "decode_countersigned_receipt",
    "decode_signed_receipt",
    "encode_receipt",
    "output_hash",
    "prompt_hash",
    "rate_from_float",
    "receipt_id",
    "sign_receipt",
    "verify_countersigned_receipt",
    "verify_job_receipt",
    "verify_receipt",
]

RECEIPT_TYPE: Final = "infernet/cpr/1"
MAX_RECEIPT_SIZE: Final = 4096

ReceiptId = NewType("ReceiptId", str)
"""64 lower-case hex characters: SHA-256 of the receipt's canonical CBOR body."""

_Hex64 = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{64}\Z")]
_Hex128 = Annotated[str, msgspec.Meta(pattern=r"\A[0-9a-f]{128}\Z")]
_OptionalHex64 = Annotated[str, msgspec.Meta(pattern=r"\A(?:[0-9a-f]{64})?\Z")]
_Count = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
_UnixTime = Annotated[int, msgspec.Meta(ge=0, le=2**53 - 1)]


class Receipt(msgspec.Struct, frozen=True, kw_only=True, tag=RECEIPT_TYPE, tag_field="type"):
    """The facts of one finished job, as the node that ran it states them."""

    job_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    node_pubkey: _Hex64
    client_pubkey: _OptionalHex64 = ""  # "" when the client has no key (bearer-token API)
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    weights_hash: Annotated[str, msgspec.Meta(max_length=128)] = ""
    input_tokens: _Count
    output_tokens: _Count
    completed_at: _UnixTime
    ttft_ms: _Count = 0
    tokens_per_s: Decimal = Decimal(0)
    value: Decimal  # what the job is worth in ``currency``, before the platform fee
    currency: Annotated[str, msgspec.Meta(pattern=r"\A[A-Z]{2,10}\Z")] = "USDC"
    chain: Chain
    prompt_hash: _OptionalHex64 = ""
    output_hash: _OptionalHex64 = ""


class SignedReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """A receipt body as the node signed it (``body`` is the exact canonical CBOR)."""

    body: bytes
    node_sig: _Hex128


class CountersignedReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """A node-signed receipt plus the coordinator's countersignature: what counts for payout."""

    body: bytes
    node_sig: _Hex128
    coordinator_pubkey: _Hex64
    coordinator_sig: _Hex128


@dataclass(frozen=True, slots=True)
class VerifiedReceipt:
    """A receipt whose signatures checked; ``coordinator`` is None if only the node signed."""

    receipt: Receipt
    receipt_id: ReceiptId
    node: PublicKey
    coordinator: PublicKey | None
    node_sig: str  # the node signature that checked


class ChatMessage(Protocol):
    """Anything with a role and a content string (``frames.Message`` is one)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


def prompt_hash(messages: Iterable[ChatMessage]) -> str:
    """Return hex SHA-256 of the compact JSON ``[{"role":…,"content":…},…]`` of a prompt.

    Raises:
        LocalProtocolError: a string holds a lone surrogate.
    """
    try:
        data = msgspec.json.encode([{"role": m.role, "content": m.content} for m in messages])
    except UnicodeEncodeError:
        raise LocalProtocolError("prompt text is not valid Unicode") from None
    return hashlib.sha256(data).hexdigest()


def output_hash(text: str) -> str:
    """Return hex SHA-256 of the UTF-8 output text (all chunks joined).

    Raises:
        LocalProtocolError: the text holds a lone surrogate.
    """
    try:
        return hashlib.sha256(text.encode("utf-8")).hexdigest()
    except UnicodeEncodeError:
        raise LocalProtocolError("output text is not valid Unicode") from None


def rate_from_float(tokens_per_s: float) -> Decimal:
    """Turn a measured rate into the receipt's Decimal, to 3 decimals (negatives become 0).

    Raises:
        Nothing: NaN and infinities become 0.
    """
    if tokens_per_s != tokens_per_s or tokens_per_s in (float("inf"), float("-inf")):
        return Decimal(0)
    return max(Decimal(0), Decimal(repr(round(tokens_per_s, 3))))


def receipt_id(body: bytes) -> ReceiptId:
    """Return the id of a receipt body: hex SHA-256 of its canonical CBOR.

    Raises:
        Nothing.
    """
    return ReceiptId(hashlib.sha256(body).hexdigest())


def _countersign_digest(body: bytes, node_sig_hex: str) -> bytes:
    return hashlib.sha256(record_digest(body) + bytes.fromhex(node_sig_hex)).digest()


def sign_receipt(receipt: Receipt, node_key: SecretKey, aux: bytes | None = None) -> SignedReceipt:
    """Encode ``receipt`` canonically and sign its id with the node key.

    Raises:
        LocalProtocolError: ``receipt.node_pubkey`` is not ``node_key``'s, or a field breaks
            a bound (a float, a negative or over-precise amount, an over-long string).
    """
    if receipt.node_pubkey != node_key.public_key.hex():
        raise LocalProtocolError("receipt node_pubkey is not the signing key")
    body = encode_valid_record(receipt, max_size=MAX_RECEIPT_SIZE)
    return SignedReceipt(body=body, node_sig=node_key.sign(record_digest(body), aux).hex())


def _verify_node(body: bytes, node_sig: str) -> VerifiedReceipt:
    receipt = decode_record(body, Receipt, max_size=MAX_RECEIPT_SIZE)
    node = verify_digest(record_digest(body), receipt.node_pubkey, node_sig, "receipt node")
    return VerifiedReceipt(receipt=receipt, receipt_id=receipt_id(body), node=node,
                           coordinator=None, node_sig=node_sig)


def verify_receipt(signed: SignedReceipt) -> VerifiedReceipt:
    """Check a node-signed receipt offline: canonical body, node signature by node_pubkey.

    Raises:
        RemoteProtocolError: the body is not a canonical v1 receipt.
        SignatureError: "bad receipt node signature".
    """
    return _verify_node(signed.body, signed.node_sig)


def verify_job_receipt(
    signed: SignedReceipt,
    *,
    job_id: str,
    node_pubkey: str | None,
    messages: Iterable[ChatMessage],
    output: str,
) -> VerifiedReceipt:
    """Check the receipt a client got in its final frame against the job it ran.

    The node signature must verify, and the receipt must name this job (and the node
    ``node_pubkey`` when the client knows who must have served it, e.g. the node a sealed
    job was sealed to), and hash the prompt the client sent and the text it received.

    Raises:
        RemoteProtocolError: not a canonical v1 receipt, or it does not match the job
            (the message names the first field that differs).
        SignatureError: "bad receipt node signature".
    """
    verified = verify_receipt(signed)
    r = verified.receipt
    checks = (("job_id", r.job_id, job_id),
              ("node_pubkey", r.node_pubkey, r.node_pubkey if node_pubkey is None
               else node_pubkey),
              ("prompt_hash", r.prompt_hash, prompt_hash(messages)),
              ("output_hash", r.output_hash, output_hash(output)))
    for name, stated, actual in checks:
        if stated != actual:
            raise RemoteProtocolError(f"the receipt's {name} does not match the job "
                                      f"({stated[:16]!r} != {actual[:16]!r})")
    return verified


def countersign_receipt(
    signed: SignedReceipt, coordinator_key: SecretKey, aux: bytes | None = None, *,
    verified: VerifiedReceipt | None = None,
) -> CountersignedReceipt:
    """Verify the node's signature, then countersign (receipt id ‖ node sig).

    ``verified``: what `verify_receipt` returned for this very ``signed`` (the caller checked
    its fields first); the body is then not decoded and verified a second time.

    Raises:
        RemoteProtocolError: the body is not a canonical v1 receipt.
        SignatureError: the node signature does not verify (never countersign it).
        ValueError: ``verified`` is another receipt's.
    """
    if verified is None:
        verify_receipt(signed)
    elif (verified.node_sig != signed.node_sig or verified.coordinator is not None
          or verified.receipt_id != receipt_id(signed.body)):
        raise ValueError("verified is not the node-signed receipt being countersigned")
    sig = coordinator_key.sign(_countersign_digest(signed.body, signed.node_sig), aux)
    return CountersignedReceipt(
        body=signed.body,
        node_sig=signed.node_sig,
        coordinator_pubkey=coordinator_key.public_key.hex(),
        coordinator_sig=sig.hex(),
    )


def verify_countersigned_receipt(
    receipt: CountersignedReceipt, *, coordinator_keys: Collection[PublicKey]
) -> VerifiedReceipt:
    """Check both signatures offline; the countersigner must be one of ``coordinator_keys``.

    Raises:
        RemoteProtocolError: the body is not a canonical v1 receipt.
        SignatureError: a bad node or coordinator signature, or "receipt countersigned by
            an untrusted key".
    """
    verified = _verify_node(receipt.body, receipt.node_sig)
    coordinator = verify_digest(
        _countersign_digest(receipt.body, receipt.node_sig),
        receipt.coordinator_pubkey,
        receipt.coordinator_sig,
        "receipt coordinator",
    )
    if coordinator not in coordinator_keys:
        raise SignatureError("receipt countersigned by an untrusted key")
    return VerifiedReceipt(receipt=verified.receipt, receipt_id=verified.receipt_id,
                           node=verified.node, coordinator=coordinator,
                           node_sig=verified.node_sig)


def encode_receipt(receipt: SignedReceipt | CountersignedReceipt) -> bytes:
    """Return the canonical CBOR of a signed or countersigned receipt (for storage and wire).

    Raises:
        LocalProtocolError: cannot happen for receipts built by this module.
    """
    return encode_record(receipt)


def decode_signed_receipt(data: bytes) -> SignedReceipt:
    """Parse a node-signed receipt (unverified: call ``verify_receipt``).

    Raises:
        RemoteProtocolError: oversized, not canonical CBOR, or the wrong shape.
    """
    return decode_record(data, SignedReceipt, max_size=2 * MAX_RECEIPT_SIZE)


def decode_countersigned_receipt(data: bytes) -> CountersignedReceipt:
    """Parse a countersigned receipt (unverified: call ``verify_countersigned_receipt``).

    Raises:
        RemoteProtocolError: oversized, not canonical CBOR, or the wrong shape.
    """
    return decode_record(data, CountersignedReceipt, max_size=2 * MAX_RECEIPT_SIZE)

