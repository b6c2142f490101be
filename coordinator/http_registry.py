"""The node registry and the owner-command queue over HTTP.

Owns (``specs/http-api.md`` §"Node registry", §"Owner commands"):

- ``POST /api/v1/nodes/register`` — a node sends its user's `NodeDelegation` and its
  rotation chain, signed with ``X-Infernet-Auth`` by the chain's current key;
- ``POST /api/v1/user/nodes/:id/commands`` — anyone may hand in an `OwnerCommand`, which is
  queued only when signed by the user the node registered with (the command's signature is
  the credential: the coordinator cannot forge one);
- ``GET /api/v1/user/nodes/:id/commands/:cmd_id`` — a command's state, for the sender;
- ``GET /api/v1/nodes/:id/commands`` and ``POST …/commands/:cmd_id/ack`` — the node
  (``X-Infernet-Auth``) fetches its queue and reports each outcome.

Invariants: a registration is stored only after the whole chain verified, the request is
signed by the chain's current key, and that key is one this coordinator knows — from a
verified announcement, or because an earlier key of the same chain, delegated by the same
user, is registered (a rotated node re-registering before it announced); a queued command
names the node of the route and is fresh; each node has a bounded queue.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Annotated, Any, Final, Literal

import msgspec
from quart import Response, request
from quart_trio import QuartTrio

from coordinator import registry
from coordinator.http_common import ApiError, CoordinatorState, json_response, log, read_body
from coordinator.http_nodes import _authenticate_node, _decode, _node_pubkey, _raw_target
from coordinator.job_api import iso_time
from coordinator.registry import CommandRecord, Registration
from infernet.protocol.auth import AUTH_HEADER, AuthBusyError, AuthError, AuthVerifier
from infernet.protocol.delegation import (
    DEFAULT_COMMAND_MAX_AGE_S,
    MAX_CLOCK_SKEW_S,
    KeyRotation,
    NodeDelegation,
    OwnerCommand,
    decode_signed,
    verify_node_authority,
    verify_signed,
)
from infernet.protocol.errors import InfernetError, SignatureError
from infernet.protocol.keys import KeyFormatError, PublicKey, encode_npub
from infernet.protocol.owner import command_id

__all__ = ["register", "registered_user"]

_B64Record = Annotated[str, msgspec.Meta(min_length=1, max_length=12_000)]
MAX_POLL: Final = 64


class _RegisterRequest(msgspec.Struct, forbid_unknown_fields=True):
    delegation: _B64Record
    rotations: Annotated[list[_B64Record], msgspec.Meta(max_length=16)] = []


class _CommandUpload(msgspec.Struct, forbid_unknown_fields=True):
    command: _B64Record


class _Ack(msgspec.Struct, forbid_unknown_fields=True):
    status: Literal["done", "failed", "refused"]
    code: Annotated[str, msgspec.Meta(max_length=32)] = ""
    message: Annotated[str, msgspec.Meta(max_length=2048)] = ""


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("bad_request", f"{what} is not base64") from None


def _key_of(key_id: str) -> PublicKey | None:
    try:
        return PublicKey.from_hex(key_id)
    except (KeyFormatError, ValueError):
        return None


def _command_body(record: CommandRecord) -> dict[str, Any]:
    return {"id": record.id, "object": "owner_command", "node_id": record.node_pubkey,
            "user_pubkey": record.user_pubkey, "action": record.action, "model": record.model,
            "status": record.status, "code": record.code or None,
            "message": record.message or None, "created_at": int(record.created_at),
            "acked_at": int(record.acked_at) if record.acked_at is not None else None}


async def registered_user(state: CoordinatorState, node: str) -> dict[str, Any]:
    """``user_pubkey`` / ``user_npub`` ("authorized by") of a registered node, else ``{}``."""
    reg = await state.store.read(registry.get_registration, node)
    if reg is None:
        return {}
    return {"user_pubkey": reg.user_pubkey,
            "user_npub": encode_npub(PublicKey.from_hex(reg.user_pubkey)),
            "registered_at": iso_time(reg.registered_at)}


def register(app: QuartTrio, state: CoordinatorState) -> None:
    """Add the registry and owner-command routes to ``app``."""
    # Registration proves the key with the signature over the request; its nonces are kept
    # apart from the other node routes (a different target can never replay into them).
    register_auth = AuthVerifier(_key_of)

    @app.post("/api/v1/nodes/register")
    async def register_node() -> Response:
        body = await read_body(state)
        ask = _decode(body, _RegisterRequest)
        try:
            signed = decode_signed(_b64(ask.delegation, "delegation"), NodeDelegation)
            rotations = [decode_signed(_b64(r, "rotation"), KeyRotation) for r in ask.rotations]
        except InfernetError as exc:
            raise ApiError("bad_request", f"not a signed delegation chain: {exc}") from None
        now = time.time()
        try:
            authority = verify_node_authority(
                signed, user=PublicKey.from_hex(signed.record.user_pubkey), now=int(now),
                rotations=rotations)
        except SignatureError as exc:
            raise ApiError("unauthorized", f"delegation refused: {exc}") from None
        node = authority.current_key.hex()
        try:
            register_auth.verify(request.headers.get(AUTH_HEADER), key_id=node,
                                 method=request.method, target=_raw_target(), body=body, now=now)
        except AuthBusyError as exc:
            raise ApiError("rate_limited", str(exc)) from None
        except AuthError as exc:
            raise ApiError("unauthorized", f"{exc} (sign with the chain's current key)") from None
        user = authority.user.hex()
        successor = await state.store.read(registry.retired_successor, node)
        if successor is not None:
            raise ApiError("unauthorized", f"key {node} was rotated away to {successor}: "
                           "register with the chain's current key")
        retired = [(r.record.old_pubkey, r.record.new_pubkey, r.record.rotated_at)
                   for r in rotations]
        conflicts = await state.store.read(registry.retired_conflicts, retired)
        if conflicts:
            raise ApiError("bad_request", "registration refused, a chain forked from a retired "
                           f"key: {'; '.join(conflicts)}")
        if state.table.get(node) is None:
            earlier = [k.hex() for k, _ in authority.retired]
            known = await state.store.read(registry.registered_user_of, earlier)
            if user not in known.values():
                raise ApiError("unauthorized", "unknown node key: this coordinator has not seen "
                               "the node announce yet; start it (`infernet start`), then "
                               "register again")
        existing = await state.store.read(registry.get_registration, node)
        reg = Registration(node_pubkey=node, user_pubkey=user, delegation=ask.delegation,
                           rotations=json.dumps(ask.rotations), registered_at=now)
        await state.store.write(registry.save_registration, state.store.sync, reg, retired)
        # A retired key routes no more jobs, even while its last announcement is fresh.
        for key in state.table.retire([old for old, _, _ in retired]):
            log.info("node %s: retired key %s leaves the peer table", node[:12], key[:12])
        d = authority.delegation
        return json_response({
            "node_id": node, "node_npub": encode_npub(authority.current_key),
            "user_pubkey": user, "user_npub": encode_npub(authority.user),
            "scope": list(d.scope), "expires_at": d.expires_at, "rotations": len(rotations),
            "registered_at": int(now)}, 200 if existing else 201)

    @app.post("/api/v1/user/nodes/<node_id>/commands")
    async def queue_command(node_id: str) -> Response:
        node = _node_pubkey(node_id)
        upload = _decode(await read_body(state), _CommandUpload)
        raw = _b64(upload.command, "command")
        try:
            signed = decode_signed(raw, OwnerCommand)
            command = verify_signed(signed)
        except SignatureError as exc:
            raise ApiError("unauthorized", str(exc)) from None
        except InfernetError as exc:
            raise ApiError("bad_request", f"not a signed owner command: {exc}") from None
        if command.node_pubkey != node:
            raise ApiError("bad_request", "the command names another node than the route")
        reg = await state.store.read(registry.get_registration, node)
        if reg is None:
            raise ApiError("not_found", "this node is not registered with this coordinator "
                           "(the node runs `infernet register`)")
        if command.user_pubkey != reg.user_pubkey:
            raise ApiError("unauthorized", "the command is not signed by the user key this "
                           "node is registered with")
        now = time.time()
        if not now - DEFAULT_COMMAND_MAX_AGE_S <= command.issued_at <= now + MAX_CLOCK_SKEW_S:
            raise ApiError("bad_request", "the command is stale or dated in the future; sign "
                           "a new one (check the clock)")
        cid = command_id(signed)
        existing = await state.store.read(registry.get_command, cid)
        if existing is not None:
            return json_response(_command_body(existing), 200)
        if await state.store.read(registry.count_pending, node) >= registry.MAX_PENDING:
            raise ApiError("rate_limited", f"{registry.MAX_PENDING} commands already wait for "
                           "this node; retry once it has taken them")
        record = CommandRecord(id=cid, node_pubkey=node, user_pubkey=command.user_pubkey,
                               action=command.action, model=command.model,
                               command=upload.command, status="pending", code="", message="",
                               created_at=now, acked_at=None)
        await state.store.write(registry.insert_command, state.store.sync, record)
        return json_response(_command_body(record), 201)

    @app.get("/api/v1/user/nodes/<node_id>/commands/<cmd_id>")
    async def command_state(node_id: str, cmd_id: str) -> Response:
        node = _node_pubkey(node_id)
        record = await state.store.read(registry.get_command, cmd_id)
        if record is None or record.node_pubkey != node:
            raise ApiError("not_found", f"no command {cmd_id!r} for this node")
        return json_response(_command_body(record))

    @app.get("/api/v1/nodes/<node_id>/commands")
    async def node_commands(node_id: str) -> Response:
        node = _node_pubkey(node_id)
        await _authenticate_node(state, node, await read_body(state))
        try:
            limit = min(max(int(request.args.get("limit", "16")), 1), MAX_POLL)
        except ValueError:
            raise ApiError("bad_request", "`limit` must be an integer") from None
        records = await state.store.read(registry.pending_commands, node, limit)
        return json_response({"node_id": node, "commands": [
            {"id": r.id, "command": r.command, "action": r.action, "model": r.model,
             "created_at": int(r.created_at)} for r in records]})

    @app.post("/api/v1/nodes/<node_id>/commands/<cmd_id>/ack")
    async def ack_command(node_id: str, cmd_id: str) -> Response:
        node = _node_pubkey(node_id)
        body = await read_body(state)
        await _authenticate_node(state, node, body)
        ack = _decode(body, _Ack)
        record = await state.store.read(registry.get_command, cmd_id)
        if record is None or record.node_pubkey != node:
            raise ApiError("not_found", f"no command {cmd_id!r} for this node")
        if record.status == "pending":
            await state.store.write(registry.ack_command, state.store.sync, node, cmd_id,
                                    ack.status, ack.code, ack.message, time.time())
            record = await state.store.read(registry.get_command, cmd_id) or record
        return json_response(_command_body(record))
