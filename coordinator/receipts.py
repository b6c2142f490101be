"""Checking and countersigning the receipts (CPRs) nodes return in their final frames.

Owns: the coordinator's side of ``specs/receipts.md`` §3: verify the node signature, check
every field against the coordinator's own record of the job (job id, node, model, weights,
token counts, prompt and output hashes, value per the pricing table), and countersign only
a receipt that passed; plus the stored form of each outcome and its JSON for
``GET /api/v1/cprs/:id``.

A receipt for a job this coordinator never routed (a node served it straight over the mesh)
is kept as ``unwitnessed``: its node signature and its value by the pricing table are
checked, but nothing else can be, so it is never countersigned and never paid.

Invariants: a receipt is countersigned only if its node signature verifies and it states
exactly what the coordinator saw; a receipt that fails is kept as ``rejected`` with the
reason (an audit trail), never countersigned. Pure: no I/O, time is an argument.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from infernet.protocol.errors import InfernetError
from infernet.protocol.frames import FinalFrame, JobRequest
from infernet.protocol.keys import SecretKey
from infernet.protocol.pricing import job_value, rates_for_model, split_fee
from infernet.protocol.receipt import (
    Receipt,
    SignedReceipt,
    countersign_receipt,
    encode_receipt,
    output_hash,
    prompt_hash,
    receipt_id,
    verify_receipt,
)

__all__ = ["JobFacts", "ReceiptNotReady", "ReceiptRecord", "ReceiptRejected",
           "UnwitnessedQuotaFull", "check_and_countersign", "receipt_body", "rejected_record",
           "unwitnessed_record"]


class ReceiptRejected(InfernetError):
    """Raised when a node's receipt does not verify or does not match the job; not paid."""


class ReceiptNotReady(InfernetError):
    """Raised when a receipt names a job this coordinator is still running: send it again
    later (HTTP 409), the job's outcome is not stored yet."""

    code = "bad_request"


class UnwitnessedQuotaFull(InfernetError):
    """Raised when a node already stored its day's quota of unwitnessed receipts: send the
    rest after ``retry_after`` seconds (HTTP 429)."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class ReceiptRecord:
    """One receipt as the store keeps it (amounts as canonical decimal text)."""

    id: str
    job_id: str
    node_pubkey: str
    status: str  # "countersigned" | "rejected" | "unwitnessed"
    reason: str
    model: str
    input_tokens: int
    output_tokens: int
    value: str
    platform_fee: str
    node_amount: str
    currency: str
    chain: str
    completed_at: int
    envelope: str  # base64 of the canonical CBOR envelope (countersigned when accepted)
    created_at: float


@dataclass(frozen=True, slots=True)
class JobFacts:
    """What the coordinator itself saw of a job, to hold a receipt against."""

    job_id: str
    node_pubkey: str
    model: str
    input_tokens: int
    output_tokens: int
    client_pubkey: str = ""
    weights_hash: str | None = None
    prompt_hash: str | None = None
    output_hash: str | None = None

    @classmethod
    def of_run(cls, request: JobRequest, node_pubkey: str, weights_hash: str | None,
               final: FinalFrame, text: str) -> JobFacts:
        """The facts of a job this process just ran."""
        return cls(job_id=request.job_id, node_pubkey=node_pubkey, model=request.model,
                   input_tokens=final.prompt_tokens, output_tokens=final.completion_tokens,
                   client_pubkey=request.client_pubkey, weights_hash=weights_hash,
                   prompt_hash=_safe(lambda: prompt_hash(request.messages)),
                   output_hash=_safe(lambda: output_hash(text)))


    @staticmethod
    def of_text(text: str) -> str | None:
        """The output hash of ``text``, None if it cannot be hashed."""
        return _safe(lambda: output_hash(text))


def _safe(fn: Callable[[], str]) -> str | None:
    try:
        return fn()
    except InfernetError:  # text with a lone surrogate: that hash cannot be checked
        return None


def _check(receipt: Receipt, facts: JobFacts) -> str | None:
    """Why ``receipt`` does not match the job, or None when it does."""
    expected: list[tuple[str, object, object]] = [
        ("job_id", receipt.job_id, facts.job_id),
        ("node_pubkey", receipt.node_pubkey, facts.node_pubkey),
        ("model", receipt.model, facts.model),
        ("input_tokens", receipt.input_tokens, facts.input_tokens),
        ("output_tokens", receipt.output_tokens, facts.output_tokens),
        ("client_pubkey", receipt.client_pubkey, facts.client_pubkey),
    ]
    for name, mine in (("weights_hash", facts.weights_hash), ("prompt_hash", facts.prompt_hash),
                       ("output_hash", facts.output_hash)):
        stated = getattr(receipt, name)
        if mine and stated:  # a hash a side does not know is not held against the receipt
            expected.append((name, stated, mine))
    for name, stated, seen in expected:
        if stated != seen:
            return f"{name} is {stated!r}, the coordinator saw {seen!r}"
    value = job_value(receipt.input_tokens, receipt.output_tokens,
                      rates_for_model(receipt.model))
    if receipt.value != value:
        return f"value is {receipt.value}, the pricing table gives {value}"
    return None


def check_and_countersign(
    signed: SignedReceipt, facts: JobFacts, *, key: SecretKey, now: float,
) -> ReceiptRecord:
    """Verify ``signed`` against what the coordinator saw of the job; countersign it.

    Raises:
        ReceiptRejected: a bad signature, an undecodable body, or a field that differs from
            what the coordinator saw (`rejected_record` then builds the audit entry).
    """
    try:
        verified = verify_receipt(signed)  # decoded and its node signature checked, once
        receipt = verified.receipt
        problem = _check(receipt, facts)
        if problem is not None:
            raise ReceiptRejected(problem)
        countersigned = countersign_receipt(signed, key, verified=verified)
    except ReceiptRejected:
        raise
    except InfernetError as exc:
        raise ReceiptRejected(f"receipt does not verify: {exc}") from None
    return _record(receipt, receipt_id(signed.body), "countersigned", "",
                   encode_receipt(countersigned), now)


def unwitnessed_record(signed: SignedReceipt, now: float) -> ReceiptRecord:
    """The stored form of a receipt for a job this coordinator did not route.

    Only what a third party can check is checked: the node signature and the value the
    pricing table gives for the stated model and tokens. Never countersigned, never paid.

    Raises:
        ReceiptRejected: the signature does not verify, or the value is not the table's.
    """
    try:
        receipt = verify_receipt(signed).receipt
    except InfernetError as exc:
        raise ReceiptRejected(f"receipt does not verify: {exc}") from None
    value = job_value(receipt.input_tokens, receipt.output_tokens,
                      rates_for_model(receipt.model))
    if receipt.value != value:
        raise ReceiptRejected(f"value is {receipt.value}, the pricing table gives {value}")
    return _record(receipt, receipt_id(signed.body), "unwitnessed", "",
                   encode_receipt(signed), now)


def rejected_record(signed: SignedReceipt, reason: str, facts: JobFacts,
                    now: float) -> ReceiptRecord:
    """The audit entry of a receipt that was not countersigned."""
    try:
        receipt: Receipt | None = verify_receipt(signed).receipt
    except InfernetError:
        receipt = None
    rid = receipt_id(signed.body)
    envelope = encode_receipt(signed)
    if receipt is None:
        return ReceiptRecord(rid, facts.job_id, facts.node_pubkey, "rejected", reason,
                             facts.model, 0, 0, "0", "0", "0", "USDC", "", 0,
                             base64.b64encode(envelope).decode(), now)
    return _record(receipt, rid, "rejected", reason, envelope, now, job_id=facts.job_id,
                   node_pubkey=facts.node_pubkey)


def _record(receipt: Receipt, rid: str, status: str, reason: str, envelope: bytes, now: float,
            *, job_id: str | None = None, node_pubkey: str | None = None) -> ReceiptRecord:
    split = split_fee(receipt.value)
    return ReceiptRecord(
        id=rid, job_id=job_id or receipt.job_id, node_pubkey=node_pubkey or receipt.node_pubkey,
        status=status, reason=reason, model=receipt.model, input_tokens=receipt.input_tokens,
        output_tokens=receipt.output_tokens, value=_text(receipt.value),
        platform_fee=_text(split.platform), node_amount=_text(split.operator),
        currency=receipt.currency, chain=receipt.chain, completed_at=receipt.completed_at,
        envelope=base64.b64encode(envelope).decode(), created_at=now)


def _text(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


def receipt_body(record: ReceiptRecord, coordinator_pubkey: str) -> dict[str, Any]:
    """``GET /api/v1/cprs/:id``: the receipt, its amounts and the envelope to verify offline."""
    return {"id": record.id, "object": "cpr", "job_id": record.job_id,
            "status": record.status, **({"reason": record.reason} if record.reason else {}),
            "node_pubkey": record.node_pubkey, "coordinator_pubkey": coordinator_pubkey,
            "model": record.model, "input_tokens": record.input_tokens,
            "output_tokens": record.output_tokens, "value": record.value,
            "currency": record.currency, "platform_fee": record.platform_fee,
            "node_amount": record.node_amount, "chain": record.chain,
            "completed_at": record.completed_at, "receipt": record.envelope}
