"""The key hierarchy on disk: user key, node delegation, rotations, model keys.

Owns: the files of ``specs/keys.md`` §4 under ``$INFERNET_HOME/keys/`` and the I/O around
the pure records of `infernet.protocol.delegation`:

- ``user.key`` — the operator's master key (hex, 0600). Created by ``infernet init`` only when
  there is neither a user key nor a delegation (a user who moved the key offline keeps
  their identity); ``INFERNET_USER_KEY`` or ``--user-key FILE`` point at a key kept elsewhere.
- ``delegation.cbor`` — the user's signed `NodeDelegation` of the node key (all four scopes,
  one year), re-issued when the user key is at hand and the delegation no longer covers the
  node key (``init --force``) or is about to expire.
- ``rotations.json`` — the signed `KeyRotation` chain since that delegation (base64 CBOR);
  ``retired/<pubkey>.key`` — node keys rotated away, kept for their 24 h receipt grace;
  ``rotations-earlier.json`` — the rotations of chains a fresh delegation replaced, while
  their grace lasts (a coordinator keeps linking those keys to this node, so their
  receipts are still sent).
- ``models/<safe name>.key`` and ``.delegation.cbor`` — one model key per served model, with
  the node key's `ModelDelegation` (re-issued when the node key or the weights change).

Invariants: every secret file is written 0600 through a temp file and a rename, so a crash
never leaves half a key; a secret key is never logged; reading refuses key files that other
users can read, like `infernet.node.config.load_node_key`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from infernet.node.config import NODE_KEY_FILE, ConfigError, load_node_key, loose_permissions
from infernet.protocol.delegation import (
    MAX_CLOCK_SKEW_S,
    ROTATION_GRACE_S,
    DelegationError,
    KeyRotation,
    ModelDelegation,
    NodeAuthority,
    NodeDelegation,
    Scope,
    Signed,
    decode_signed,
    encode_signed,
    sign_record,
    verify_node_authority,
    verify_signed,
)
from infernet.protocol.errors import InfernetError, SignatureError
from infernet.protocol.keys import KeyFormatError, PublicKey, SecretKey, decode_nsec

__all__ = [
    "DELEGATION_FILE",
    "NODE_SCOPE",
    "USER_KEY_FILE",
    "IdentityReport",
    "ModelKey",
    "Rotated",
    "ensure_identity",
    "ensure_model_key",
    "ensure_model_keys",
    "load_authority",
    "load_delegation",
    "load_rotations",
    "load_user_key",
    "model_key_files",
    "read_model_delegation",
    "retired_keys",
    "rotate_node_key",
    "rotations_wire",
    "safe_model_name",
    "user_key_path",
]

USER_KEY_FILE: Final = "keys/user.key"
DELEGATION_FILE: Final = "keys/delegation.cbor"
ROTATIONS_FILE: Final = "keys/rotations.json"
EARLIER_ROTATIONS_FILE: Final = "keys/rotations-earlier.json"
RETIRED_DIR: Final = "keys/retired"
MODELS_DIR: Final = "keys/models"
NODE_SCOPE: Final[tuple[Scope, ...]] = ("serve", "receipts", "model_keys", "commands")
DELEGATION_LIFETIME_S: Final = 365 * 86400
MODEL_KEY_LIFETIME_S: Final = 365 * 86400
RENEW_BEFORE_S: Final = 7 * 86400  # re-issue a delegation a week before it expires
_SAFE: Final = re.compile(r"[^A-Za-z0-9._-]")


class _Rotations(msgspec.Struct, forbid_unknown_fields=True):
    rotations: list[str] = []


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` (0600) via a temp file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _read_secret(path: Path, what: str, fix: str) -> SecretKey:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} is missing: {fix}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path} ({exc.strerror})") from None
    loose = loose_permissions(path)
    if loose:
        raise ConfigError(f"{path} is {loose}: run `chmod 600 {path}`")
    try:
        return decode_nsec(text) if text.startswith("nsec1") else SecretKey.from_hex(text)
    except KeyFormatError as exc:
        raise ConfigError(f"{path}: {exc}; it must hold 64 hex characters or an nsec1…") from None


# -- user key ----------------------------------------------------------------------------


def user_key_path(home: Path, override: Path | None = None,
                  env: Mapping[str, str] | None = None) -> Path:
    """Where the user key is: ``--user-key``, else ``INFERNET_USER_KEY``, else keys/user.key."""
    if override is not None:
        return override.expanduser()
    env = os.environ if env is None else env
    configured = env.get("INFERNET_USER_KEY")
    return Path(configured).expanduser() if configured else home / USER_KEY_FILE


def load_user_key(path: Path) -> SecretKey:
    """Read a user key file (hex or nsec).

    Raises:
        ConfigError: missing, unreadable, readable by others, or not a key.
    """
    return _read_secret(path, "user key", "give --user-key FILE or set INFERNET_USER_KEY "
                        "to where you keep it")


# -- node delegation and rotations -------------------------------------------------------


def load_delegation(home: Path) -> Signed[NodeDelegation] | None:
    """The stored node delegation (unverified), or None when there is none.

    Raises:
        ConfigError: the file is corrupt.
    """
    path = home / DELEGATION_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return decode_signed(data, NodeDelegation)
    except InfernetError as exc:
        raise ConfigError(f"{path} is not a node delegation ({exc}); delete it and run "
                          "`infernet init` with the user key") from None


def load_rotations(home: Path) -> list[Signed[KeyRotation]]:
    """The stored rotation chain (unverified), oldest first.

    Raises:
        ConfigError: the file is corrupt.
    """
    return _read_rotations(home / ROTATIONS_FILE)


def _read_rotations(path: Path) -> list[Signed[KeyRotation]]:
    try:
        doc = msgspec.json.decode(path.read_bytes(), type=_Rotations)
        return [decode_signed(base64.b64decode(r, validate=True), KeyRotation)
                for r in doc.rotations]
    except FileNotFoundError:
        return []
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError, InfernetError) as exc:
        raise ConfigError(f"{path} is corrupt ({exc})") from None


def _save_rotations(home: Path, rotations: Sequence[Signed[KeyRotation]],
                    name: str = ROTATIONS_FILE) -> None:
    doc = _Rotations([base64.b64encode(encode_signed(r)).decode() for r in rotations])
    _write_private(home / name, msgspec.json.encode(doc) + b"\n")


def retired_keys(home: Path) -> dict[str, int]:
    """The node keys rotated away, under the current delegation or an earlier one whose
    grace is not over: pubkey hex → ``rotated_at``.

    Read from the files as this node wrote them, unverified: it only tells the receipt
    submitter which of its own receipts no coordinator will take any more.

    Raises:
        ConfigError: a file is corrupt.
    """
    rotations = _read_rotations(home / EARLIER_ROTATIONS_FILE) + load_rotations(home)
    return {r.record.old_pubkey: r.record.rotated_at for r in rotations}


def _set_rotations_aside(home: Path, now: int) -> None:
    """Before a fresh delegation starts a new chain: keep the rotations whose grace lasts
    (`retired_keys` still reports them), drop the others and the chain."""
    try:
        rotations = (_read_rotations(home / EARLIER_ROTATIONS_FILE) + load_rotations(home))
    except ConfigError:
        rotations = []  # a corrupt file: its keys' receipts are refused, as before
    keep = {r.record.old_pubkey: r for r in rotations
            if now <= r.record.rotated_at + ROTATION_GRACE_S + MAX_CLOCK_SKEW_S}
    if keep:
        _save_rotations(home, list(keep.values()), EARLIER_ROTATIONS_FILE)
    else:
        (home / EARLIER_ROTATIONS_FILE).unlink(missing_ok=True)
    (home / ROTATIONS_FILE).unlink(missing_ok=True)


def rotations_wire(rotations: Sequence[Signed[KeyRotation]]) -> list[str]:
    """The chain as base64 canonical CBOR strings (what registration sends)."""
    return [base64.b64encode(encode_signed(r)).decode() for r in rotations]


def load_authority(home: Path, now: int) -> NodeAuthority:
    """Verify the stored delegation and rotations at ``now`` against the node key on disk.

    Raises:
        ConfigError: no delegation, a corrupt file, or the node key is not the chain's
            current key.
        SignatureError: a bad signature or a link that does not hold (DelegationError).
    """
    signed = load_delegation(home)
    if signed is None:
        raise ConfigError(f"{home / DELEGATION_FILE} is missing: run `infernet init` with "
                          "the user key (--user-key FILE) to delegate this node")
    authority = verify_node_authority(signed, user=PublicKey.from_hex(signed.record.user_pubkey),
                                      now=now, rotations=load_rotations(home))
    node = load_node_key(home).public_key
    if authority.current_key != node:
        raise ConfigError(f"the delegation does not cover the node key in {home / NODE_KEY_FILE}"
                          ": run `infernet init` with the user key to delegate it again")
    return authority


@dataclass(frozen=True, slots=True)
class IdentityReport:
    """What `ensure_identity` found or did."""

    user_pubkey: str | None
    user_key_file: Path | None  # where the user key was read or created; None if not at hand
    created_user_key: bool
    issued_delegation: bool
    warning: str = ""


def _delegation_ok(home: Path, node: PublicKey, now: int) -> bool:
    try:
        authority = load_authority(home, now)
    except (ConfigError, SignatureError):
        return False
    return (authority.current_key == node
            and authority.delegation.expires_at - now > RENEW_BEFORE_S)


def ensure_identity(home: Path, node_key: SecretKey, now: int, *,
                    user_key_file: Path | None = None,
                    env: Mapping[str, str] | None = None,
                    create_user_key: bool = True) -> IdentityReport:
    """Make sure the node key is delegated by a user key; create the user key if none exists.

    Idempotent. A missing user key is created (when ``create_user_key``) only where there is
    no delegation either (a user key moved offline is never replaced). Without the user key
    a valid delegation is kept as it is, and a missing or stale one is reported in
    ``warning``.

    Raises:
        ConfigError: the user key file given is missing or unusable, or a file is corrupt.
    """
    path = user_key_path(home, user_key_file, env)
    existing = load_delegation(home)
    explicit = user_key_file is not None or path != home / USER_KEY_FILE
    created = False
    if path.exists() or explicit:
        user: SecretKey | None = load_user_key(path)
    elif existing is None and create_user_key:
        user, created = SecretKey.generate().even_y(), True
        _write_private(path, user.hex().encode() + b"\n")
    else:
        user = None
    if _delegation_ok(home, node_key.public_key, now):
        assert existing is not None  # _delegation_ok loaded it
        return IdentityReport(existing.record.user_pubkey, path if user else None, created,
                              False)
    if user is None:
        return IdentityReport(
            existing.record.user_pubkey if existing else None, None, False, False,
            warning="the node delegation is missing, expiring or for another node key; run "
                    "`infernet init --user-key FILE` with your user key to renew it")
    record = NodeDelegation(user_pubkey=user.public_key.hex(),
                            node_pubkey=node_key.public_key.hex(), scope=NODE_SCOPE,
                            issued_at=now, expires_at=now + DELEGATION_LIFETIME_S)
    _write_private(home / DELEGATION_FILE, encode_signed(sign_record(record, user)))
    _set_rotations_aside(home, now)  # a fresh delegation starts a new chain
    return IdentityReport(user.public_key.hex(), path, created, True)


# -- rotation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rotated:
    """The outcome of `rotate_node_key`."""

    old: PublicKey
    new: SecretKey
    rotation: Signed[KeyRotation]
    retired_file: Path
    grace_until: int


def rotate_node_key(home: Path, now: int) -> Rotated:
    """Replace the node key with a new one, signed over by the old key (``specs/keys.md`` §4.1).

    The old key moves to ``keys/retired/<pubkey>.key``; model delegations are re-issued by
    the new key; the config is left alone.

    Raises:
        ConfigError: no valid delegation to rotate under, or the chain is full.
        SignatureError: the stored chain does not verify.
    """
    authority = load_authority(home, now)
    old = load_node_key(home)
    new = SecretKey.generate().even_y()
    rotation = sign_record(KeyRotation(old_pubkey=old.public_key.hex(),
                                       new_pubkey=new.public_key.hex(), rotated_at=now), old)
    chain = [*load_rotations(home), rotation]
    signed = load_delegation(home)
    assert signed is not None  # load_authority checked it
    try:
        verify_node_authority(signed, user=authority.user, now=now, rotations=chain)
    except DelegationError as exc:
        raise ConfigError(f"cannot rotate under this delegation ({exc}); run `infernet init "
                          "--force --user-key FILE` to start a new one") from None
    retired = home / RETIRED_DIR / f"{old.public_key.hex()}.key"
    _write_private(retired, old.hex().encode() + b"\n")
    staged = home / "keys" / ".node.key.new"
    _write_private(staged, new.hex().encode() + b"\n")
    _save_rotations(home, chain)
    os.replace(staged, home / NODE_KEY_FILE)  # the chain and the key now agree
    for key_file in model_key_files(home):
        model = read_model_delegation(key_file)
        if model is not None:
            ensure_model_key(home, new, model.model, model.weights_hash, now)
    return Rotated(old.public_key, new, rotation, retired, now + ROTATION_GRACE_S)


# -- model keys --------------------------------------------------------------------------


def safe_model_name(model: str) -> str:
    """A file name for ``model``: its safe characters, plus a short hash when any were not."""
    safe = _SAFE.sub("_", model)[:80]
    if safe == model and not model.startswith("."):
        return safe
    return f"{safe.lstrip('.') or 'model'}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


@dataclass(frozen=True, slots=True)
class ModelKey:
    """One model key and its delegation by the node key."""

    model: str
    public_key: PublicKey
    delegation: Signed[ModelDelegation]
    file: Path
    issued: bool  # created or re-issued by this call


def model_key_files(home: Path) -> list[Path]:
    """Every model key file, sorted."""
    return sorted((home / MODELS_DIR).glob("*.key"))


def _delegation_file(key_file: Path) -> Path:
    return key_file.with_suffix(".delegation.cbor")


def read_model_delegation(key_file: Path) -> ModelDelegation | None:
    """The (unverified) delegation stored beside a model key file, or None."""
    try:
        return decode_signed(_delegation_file(key_file).read_bytes(), ModelDelegation).record
    except (OSError, InfernetError):
        return None


def ensure_model_key(home: Path, node_key: SecretKey, model: str, weights_hash: str,
                     now: int) -> ModelKey:
    """The model key of ``model``, created or re-delegated when needed.

    A delegation is re-issued when it is missing, signed by another node key, for other
    weights (when ``weights_hash`` is given), or expiring within a week.

    Raises:
        ConfigError: the model key file is unreadable or not a key.
    """
    key_file = home / MODELS_DIR / f"{safe_model_name(model)}.key"
    if key_file.exists():
        key = _read_secret(key_file, "model key", "delete it to create a new one")
    else:
        key = SecretKey.generate().even_y()
        _write_private(key_file, key.hex().encode() + b"\n")
    current = _current_model_delegation(key_file, key, node_key, model, weights_hash, now)
    if current is not None:
        return ModelKey(model, key.public_key, current, key_file, False)
    record = ModelDelegation(node_pubkey=node_key.public_key.hex(),
                             model_pubkey=key.public_key.hex(), model=model,
                             weights_hash=weights_hash, issued_at=now,
                             expires_at=now + MODEL_KEY_LIFETIME_S)
    signed = sign_record(record, node_key)
    _write_private(_delegation_file(key_file), encode_signed(signed))
    return ModelKey(model, key.public_key, signed, key_file, True)


def _current_model_delegation(key_file: Path, key: SecretKey, node_key: SecretKey, model: str,
                              weights_hash: str, now: int) -> Signed[ModelDelegation] | None:
    try:
        signed = decode_signed(_delegation_file(key_file).read_bytes(), ModelDelegation)
    except (OSError, InfernetError):
        return None
    try:
        d = verify_signed(signed)
    except SignatureError:
        return None
    if d.node_pubkey != node_key.public_key.hex() or d.issued_at > now + MAX_CLOCK_SKEW_S:
        return None
    if (d.model != model or d.model_pubkey != key.public_key.hex()
            or (weights_hash and d.weights_hash != weights_hash)
            or d.expires_at - now <= RENEW_BEFORE_S):
        return None
    return signed


def ensure_model_keys(home: Path, node_key: SecretKey, weights: Mapping[str, str],
                      now: int) -> list[ModelKey]:
    """`ensure_model_key` for every served model (name → weights hash); the daemon calls it
    when it starts serving a set of models.

    Raises:
        ConfigError: a model key file is unreadable or not a key.
    """
    return [ensure_model_key(home, node_key, model, weights_hash, now)
            for model, weights_hash in sorted(weights.items())]
