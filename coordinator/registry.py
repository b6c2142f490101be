"""The node registry and the owner-command queue in the coordinator's store.

Owns: the rows of the ``node_registry`` and ``node_commands`` tables (migration 5 in
`coordinator.store`) and their queries, as plain functions over a `Store` so that
`AsyncStore.read` / ``write`` can run them (``specs/http-api.md`` §"Node registry",
§"Owner commands").

Also: `registration_authority`, a stored registration's chain verified again at a given
time (which keys it retired and when, for receipts signed before a rotation).

Invariants: a registration is keyed by the node's current key and names the user that
delegated it; a command row is keyed by its command id (the hash of the signed record), so
the same command queued twice is one row; the routes keep at most `MAX_PENDING` commands
waiting per node; SQL stays portable (no SQLite-only syntax beyond ``ON CONFLICT``, which
Postgres shares).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from coordinator.store import Store
from infernet.protocol.delegation import (
    KeyRotation,
    NodeAuthority,
    NodeDelegation,
    Signed,
    decode_signed,
    verify_node_authority,
)
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import PublicKey

__all__ = [
    "MAX_LINEAGE",
    "MAX_PENDING",
    "CommandRecord",
    "Registration",
    "ack_command",
    "count_pending",
    "earning_keys",
    "get_command",
    "get_registration",
    "insert_command",
    "pending_commands",
    "predecessors",
    "registered_user_of",
    "registration_authority",
    "retired_conflicts",
    "retired_keys",
    "retired_successor",
    "save_registration",
]

log = logging.getLogger("coordinator.registry")

MAX_PENDING: Final = 64
MAX_LINEAGE: Final = 256  # earlier keys of one node counted at most (16 per chain)


@dataclass(frozen=True, slots=True)
class Registration:
    """A node key, the user key that delegated it, and the proof (base64 CBOR records)."""

    node_pubkey: str
    user_pubkey: str
    delegation: str
    rotations: str  # JSON list of base64 signed rotations, oldest first
    registered_at: float


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One queued owner command and, once the node acknowledged it, its outcome."""

    id: str
    node_pubkey: str
    user_pubkey: str
    action: str
    model: str
    command: str  # base64 canonical CBOR of the signed command
    status: str  # "pending" | "done" | "failed" | "refused"
    code: str
    message: str
    created_at: float
    acked_at: float | None


_COMMAND_COLUMNS: Final = ("id, node_pubkey, user_pubkey, action, model, command, status, code,"
                           " message, created_at, acked_at")


def save_registration(store: Store, reg: Registration,
                      retired: Sequence[tuple[str, str, int]] = ()) -> None:
    """Insert or replace the registration of ``reg.node_pubkey``, and remember the keys its
    chain retired, (key, successor, rotated_at) (`retired_conflicts` checked them)."""
    db = store.transaction()
    db.executemany(
        "INSERT INTO retired_keys (pubkey, successor, rotated_at, registered_at)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (pubkey) DO NOTHING",
        [(key, successor, at, reg.registered_at) for key, successor, at in retired])
    db.execute(
        "INSERT INTO node_registry (node_pubkey, user_pubkey, delegation, rotations,"
        " registered_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT (node_pubkey) DO UPDATE SET"
        " user_pubkey = excluded.user_pubkey, delegation = excluded.delegation,"
        " rotations = excluded.rotations, registered_at = excluded.registered_at",
        (reg.node_pubkey, reg.user_pubkey, reg.delegation, reg.rotations, reg.registered_at))


def retired_keys(store: Store) -> list[str]:
    """Every key a registered chain rotated away (the peer table refuses them)."""
    return [str(row[0]) for row in
            store.transaction().execute("SELECT pubkey FROM retired_keys").fetchall()]


def retired_successor(store: Store, pubkey: str) -> str | None:
    """The key ``pubkey`` was rotated to in a registered chain, None if it is not retired."""
    row = store.transaction().execute(
        "SELECT successor FROM retired_keys WHERE pubkey = ?", (pubkey,)).fetchone()
    return str(row[0]) if row else None


def retired_conflicts(store: Store, retired: Sequence[tuple[str, str, int]]) -> list[str]:
    """Messages for the keys of ``retired`` (key, successor, rotated_at) that a registered
    chain retired to another successor: a second chain forked from a retired key."""
    if not retired:
        return []
    marks = ", ".join("?" for _ in retired)
    known = dict(store.transaction().execute(
        f"SELECT pubkey, successor FROM retired_keys WHERE pubkey IN ({marks})",
        [key for key, _, _ in retired]).fetchall())
    return [f"key {key} was already rotated away to {known[key]}"
            for key, successor, _ in retired if known.get(key, successor) != successor]


def get_registration(store: Store, node_pubkey: str) -> Registration | None:
    """The registration of one node key, if any."""
    row = store.transaction().execute(
        "SELECT node_pubkey, user_pubkey, delegation, rotations, registered_at"
        " FROM node_registry WHERE node_pubkey = ?", (node_pubkey,)).fetchone()
    return Registration(*row) if row else None


def registered_user_of(store: Store, node_pubkeys: list[str]) -> dict[str, str]:
    """For those of ``node_pubkeys`` that are registered: node key → user key."""
    if not node_pubkeys:
        return {}
    marks = ", ".join("?" for _ in node_pubkeys)
    rows = store.transaction().execute(
        f"SELECT node_pubkey, user_pubkey FROM node_registry WHERE node_pubkey IN ({marks})",
        node_pubkeys).fetchall()
    return {node: user for node, user in rows}


def registration_authority(reg: Registration, now: int) -> NodeAuthority:
    """Verify a stored registration's delegation and rotations again at ``now``.

    It verified when it was stored; verifying again is what tells whether it still holds
    (the delegation may have expired since) and which keys it retired, and when.

    Raises:
        SignatureError: the chain does not hold at ``now`` (a `DelegationError` says which
            link: an expired delegation, ...).
        InfernetError: the stored records do not decode (a corrupt row).
    """
    try:
        delegation = decode_signed(base64.b64decode(reg.delegation, validate=True),
                                   NodeDelegation)
        rotations = _stored_rotations(reg)
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InfernetError(f"stored registration of {reg.node_pubkey} is corrupt ({exc})",
                            code="internal_error") from None
    return verify_node_authority(delegation, user=PublicKey.from_hex(reg.user_pubkey), now=now,
                                 rotations=rotations)


def _stored_rotations(reg: Registration) -> list[Signed[KeyRotation]]:
    """The rotations of a stored registration, decoded (not verified again).

    Raises:
        binascii.Error, ValueError, TypeError: not base64 in a JSON list.
        InfernetError: a record that does not decode.
    """
    return [decode_signed(base64.b64decode(r, validate=True), KeyRotation)
            for r in json.loads(reg.rotations)]


def predecessors(store: Store, current: str) -> list[tuple[str, int]]:
    """The keys registered chains rotated into ``current``, directly or through others:
    (pubkey hex, rotated_at), oldest rotation first.

    Read from `retired_keys`, which keeps what every chain registered here retired, so a
    node whose registration no longer names them (it renewed its delegation since: a fresh
    chain starts at its current key) still has them. At most `MAX_LINEAGE` keys.
    """
    found: dict[str, int] = {}
    frontier = [current]
    db = store.transaction()
    while frontier and len(found) < MAX_LINEAGE:
        marks = ", ".join("?" for _ in frontier)
        rows = db.execute(f"SELECT pubkey, rotated_at FROM retired_keys WHERE successor IN"
                          f" ({marks})", frontier).fetchall()
        frontier = []
        for pubkey, rotated_at in rows:
            if pubkey != current and pubkey not in found:
                found[pubkey] = int(rotated_at)
                frontier.append(pubkey)
    return sorted(found.items(), key=lambda item: (item[1], item[0]))[:MAX_LINEAGE]


def earning_keys(store: Store, current: str) -> list[str]:
    """The keys a node earned under, oldest rotation first, then ``current`` (the ledger
    adds up their balances): those its registered chain retired and those earlier chains
    rotated into it (`predecessors`).

    The chains verified when they were stored; their signatures do not expire, so what they
    retired stays retired (no clock here). A corrupt registration row counts as no rotation.
    """
    retired = dict(predecessors(store, current))
    reg = get_registration(store, current)
    if reg is not None:
        try:
            for r in _stored_rotations(reg):
                retired.setdefault(r.record.old_pubkey, r.record.rotated_at)
        except (binascii.Error, ValueError, TypeError, InfernetError):
            log.warning("stored registration of %s is corrupt; its chain's retired keys are "
                        "not counted", current[:16])
    retired.pop(current, None)
    return [key for key, _ in sorted(retired.items(), key=lambda item: (item[1], item[0]))
            ] + [current]


def count_pending(store: Store, node_pubkey: str) -> int:
    """How many of a node's commands wait for its acknowledgement."""
    (waiting,) = store.transaction().execute(
        "SELECT COUNT(*) FROM node_commands WHERE node_pubkey = ? AND status = 'pending'",
        (node_pubkey,)).fetchone()
    return int(waiting)


def insert_command(store: Store, record: CommandRecord) -> None:
    """Queue a command (the same command id twice stays one row)."""
    store.transaction().execute(
        f"INSERT INTO node_commands ({_COMMAND_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO NOTHING",
        (record.id, record.node_pubkey, record.user_pubkey, record.action, record.model,
         record.command, record.status, record.code, record.message, record.created_at,
         record.acked_at))


def get_command(store: Store, cmd_id: str) -> CommandRecord | None:
    """One command by id."""
    row = store.transaction().execute(
        f"SELECT {_COMMAND_COLUMNS} FROM node_commands WHERE id = ?", (cmd_id,)).fetchone()
    return CommandRecord(*row) if row else None


def pending_commands(store: Store, node_pubkey: str, limit: int) -> list[CommandRecord]:
    """A node's commands not acknowledged yet, oldest first."""
    rows = store.transaction().execute(
        f"SELECT {_COMMAND_COLUMNS} FROM node_commands WHERE node_pubkey = ? AND"
        " status = 'pending' ORDER BY created_at, id LIMIT ?", (node_pubkey, limit)).fetchall()
    return [CommandRecord(*row) for row in rows]


def ack_command(store: Store, node_pubkey: str, cmd_id: str, status: str, code: str,
                message: str, now: float) -> bool:
    """Record a pending command's outcome; False when the node has no such pending command."""
    cur = store.transaction().execute(
        "UPDATE node_commands SET status = ?, code = ?, message = ?, acked_at = ?"
        " WHERE id = ? AND node_pubkey = ? AND status = 'pending'",
        (status, code, message, now, cmd_id, node_pubkey))
    return cur.rowcount == 1
