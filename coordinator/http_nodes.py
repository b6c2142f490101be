"""Node-facing routes, signed with ``X-Infernet-Auth``: late receipts, balance, payouts.

Owns: authenticating node requests with the protocol core's `AuthVerifier` (``specs/auth.md``:
±30 s window, 5-minute nonce cache, replay / stale / future / tampered → 401) against the
keys of nodes this coordinator knows from verified announcements, and the routes
``POST /api/v1/receipts`` (a node's receipt: countersigned when this coordinator routed the
job, kept ``unwitnessed`` when it did not), ``GET
/api/v1/nodes/:id/balance`` and ``POST /api/v1/nodes/:id/payouts``
(``specs/http-api.md`` §"Node API").

A receipt signed by a key the node has since rotated away (``specs/auth.md`` §3,
``specs/keys.md`` §4.2) is handed in by the node under its current key, named in
``X-Infernet-Pubkey``: that key authenticates the request as any other, and the node's
registration (its verified rotation chain) must show it retired the receipt's signer, for a
job completed before the rotation, less than 24 h ago.

Invariants: a node acts only for itself (the key that signed is the node the route names,
or the node whose registered chain retired the receipt's signer); a retired key's receipt
is taken from the node's current key, never on the retired key's word; the signed target is
the raw request line, never a re-encoded URL; an upload of a receipt signed by the
uploading key reads no registration.
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Annotated, Any

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from coordinator import registry
from coordinator.http_common import ApiError, CoordinatorState, json_response, read_body
from coordinator.job_api import iso_time, normalize_node_id
from coordinator.receipts import ReceiptNotReady, UnwitnessedQuotaFull, receipt_body
from infernet.protocol.auth import AUTH_HEADER, PUBKEY_HEADER, AuthBusyError, AuthError
from infernet.protocol.canonical import decode_record
from infernet.protocol.delegation import (
    DelegationError,
    check_rotation_grace,
    verify_receipt_signer,
)
from infernet.protocol.errors import InfernetError, SignatureError
from infernet.protocol.keys import PublicKey
from infernet.protocol.receipt import MAX_RECEIPT_SIZE, Receipt, decode_signed_receipt

__all__ = ["register"]


class _ReceiptUpload(msgspec.Struct, forbid_unknown_fields=True):
    receipt: Annotated[str, msgspec.Meta(min_length=1, max_length=16_384)]


class _PayoutRequest(msgspec.Struct, forbid_unknown_fields=True):
    chain: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    address: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]


def _raw_target() -> str:
    scope = request.scope
    raw = scope.get("raw_path") or scope["path"].encode()
    query = scope.get("query_string") or b""
    target = raw + (b"?" + query if query else b"")
    return target.decode("latin-1")


async def _authenticate_node(state: CoordinatorState, node_id: str, body: bytes) -> None:
    """Check ``X-Infernet-Auth`` for a request on behalf of ``node_id`` (hex).

    Raises:
        ApiError: ``unauthorized`` (401) for any failure (a key a registered chain rotated
            away included), ``rate_limited`` when the nonce cache is full.
    """
    try:
        state.node_auth.verify(request.headers.get(AUTH_HEADER), key_id=node_id,
                               method=request.method, target=_raw_target(), body=body,
                               now=time.time())
    except AuthBusyError as exc:
        raise ApiError("rate_limited", str(exc)) from None
    except AuthError as exc:
        raise ApiError("unauthorized", str(exc)) from None
    # The peer table knows every retired key (`coordinator.service` loads them, registration
    # adds them): only those cost a database read, and only once the request authenticated.
    if state.table.is_retired(node_id):
        successor = await state.store.read(registry.retired_successor, node_id)
        raise ApiError("unauthorized", f"key {node_id} was rotated away to {successor}; a "
                       "retired key signs no request (sign with the node's current key)")


async def _check_retired_signer(state: CoordinatorState, node: str, stated: Receipt) -> None:
    """Check that authenticated ``node`` may hand in a receipt signed by another key: its
    registered chain retired that key, before the job completed, less than 24 h ago.

    Raises:
        ApiError: ``unauthorized`` (401) when ``node`` is not registered here (its chain
            is unknown: the node registers when it starts, so it may come); ``bad_request``
            (400) when the chain does not hold or does not let that key sign this receipt
            now (a definitive refusal: the grace is over, the job completed after the
            rotation, or the signer is not a key of this node).
    """
    reg = await state.store.read(registry.get_registration, node)
    if reg is None:
        raise ApiError("unauthorized", "the receipt is signed by another key than this node's"
                       " and the node is not registered here: register it (`infernet "
                       "register`; the daemon does when it starts) so its key rotations are "
                       "known, then send the receipt again")
    now = int(time.time())
    signer = PublicKey.from_hex(stated.node_pubkey)
    try:
        authority = registry.registration_authority(reg, now)
    except SignatureError as exc:
        raise ApiError("bad_request", "receipt refused: the node's registered key chain no "
                       f"longer holds ({exc})") from None
    try:
        verify_receipt_signer(authority, signer, completed_at=stated.completed_at, now=now)
        return
    except SignatureError as exc:
        failure: SignatureError = exc
    when = dict(authority.retired).get(signer)
    if when is None and "receipts" in authority.delegation.scope:
        # A key an earlier chain rotated into this one: the node renewed its delegation
        # since, and its registration starts at a later key.
        when = dict(await state.store.read(registry.predecessors, node)).get(
            stated.node_pubkey)
        if when is not None:
            try:
                check_rotation_grace(when, completed_at=stated.completed_at, now=now)
                return
            except DelegationError as exc:
                failure = exc
    rotated = "" if when is None else (
        f" (key {stated.node_pubkey} was rotated away at {iso_time(when)})")
    raise ApiError("bad_request", f"receipt refused: {failure}{rotated}") from None


def _decode(body: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(body, type=kind)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeError, RecursionError) as exc:
        raise ApiError("bad_request", f"invalid request: {exc}") from None


def _node_pubkey(node_id: str) -> str:
    pubkey = normalize_node_id(node_id)
    if pubkey is None:
        raise ApiError("bad_request", "node id must be a node public key (hex or npub)")
    return pubkey


def register(app: QuartTrio, state: CoordinatorState) -> None:
    """Add the node-facing routes to ``app``."""

    @app.post("/api/v1/receipts")
    async def submit_receipt() -> Response:
        body = await read_body(state)
        upload = _decode(body, _ReceiptUpload)
        try:
            signed = decode_signed_receipt(base64.b64decode(upload.receipt, validate=True))
            stated = decode_record(signed.body, Receipt, max_size=MAX_RECEIPT_SIZE)
        except (binascii.Error, ValueError, InfernetError) as exc:
            raise ApiError("bad_request", f"not a signed receipt: {exc}") from None
        # The uploader is the receipt's signer unless the node names itself, its current key,
        # for a receipt an earlier key signed; the common case costs one header lookup.
        uploader = request.headers.get(PUBKEY_HEADER, stated.node_pubkey)
        await _authenticate_node(state, uploader, body)
        if uploader != stated.node_pubkey:
            await _check_retired_signer(state, uploader, stated)
        try:
            record, created = await state.jobs.accept_late_receipt(signed, stated)
        except ReceiptNotReady as exc:
            raise ApiError("bad_request", str(exc), status=409) from None
        except UnwitnessedQuotaFull as exc:
            raise ApiError("rate_limited", str(exc),
                           headers={"Retry-After": str(exc.retry_after)}) from None
        except InfernetError as exc:
            raise ApiError("bad_request", str(exc)) from None
        if record.status == "unwitnessed":  # stored, not countersigned: nothing to pay
            return json_response(receipt_body(record, state.coordinator_pubkey), 202)
        return json_response(receipt_body(record, state.coordinator_pubkey),
                             201 if created else 200)

    @app.get("/api/v1/nodes/<node_id>/balance")
    async def node_balance(node_id: str) -> Response:
        pubkey = _node_pubkey(node_id)
        await _authenticate_node(state, pubkey, await read_body(state))
        keys = await _keys_of(state, pubkey)
        balances = await state.ledger.balances(keys)
        payouts = await state.ledger.payouts(keys)
        return json_response({
            "node_id": pubkey, "keys": keys, "currency": "USDC",
            "balances": {chain: _text(amount) for chain, amount in sorted(balances.items())},
            "payouts": [{"id": p.id, "chain": p.chain, "address": p.address, "amount": p.amount,
                         "status": p.status, "reference": p.reference,
                         "created_at": int(p.created_at)} for p in payouts]})

    @app.post("/api/v1/nodes/<node_id>/payouts")
    async def node_payout(node_id: str) -> Response:
        pubkey = _node_pubkey(node_id)
        body = await read_body(state)
        await _authenticate_node(state, pubkey, body)
        ask = _decode(body, _PayoutRequest)
        try:
            payout = await state.ledger.pay_out(await _keys_of(state, pubkey), ask.chain,
                                                ask.address)
        except InfernetError as exc:
            raise ApiError(exc.code, str(exc)) from None
        return json_response({"id": payout.id, "node_id": pubkey, "chain": payout.chain,
                              "address": payout.address, "amount": payout.amount,
                              "currency": "USDC", "status": payout.status,
                              "reference": payout.reference}, 201)


async def _keys_of(state: CoordinatorState, pubkey: str) -> list[str]:
    """The node's keys for the ledger: its retired ones, then ``pubkey``."""
    return await state.store.read(registry.earning_keys, pubkey)


def _text(amount: Any) -> str:
    return format(amount.normalize(), "f") if amount else "0"
