"""``infernet keys list|export|verify|rotate``: the user → node → model key chain.

Owns: showing the chain (`specs/keys.md` §4: the user key that delegated this node, the node
key with its libp2p peer id and delegation, each model key), exporting one public key
(secrets only as an explicit ``--format nsec`` backup of the user or node key, with a warning
on stderr), checking a Compute Payment Receipt offline — a file, or a receipt id looked up in
the node's receipt store (``receipts/{submitted,pending,rejected}/<id>.cbor``) — and rotating
the node key (`infernet.node.identity.rotate_node_key`). Also what ``infernet init`` prints
about the user key (`report_identity`).

Exit codes: 0 on success; 1 when a signature does not check, a receipt id is not found, a
node is running during ``rotate``, or the coordinator refuses; 2 for bad input (a file that is
not a receipt, a missing or unreadable key file).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from infernet.node.config import NODE_KEY_FILE, ConfigError, load_config, load_node_key
from infernet.node.identity import (
    DELEGATION_FILE,
    USER_KEY_FILE,
    ensure_identity,
    ensure_model_key,
    load_authority,
    load_delegation,
    load_rotations,
    load_user_key,
    model_key_files,
    read_model_delegation,
    rotate_node_key,
    user_key_path,
)
from infernet.protocol.errors import InfernetError, RemoteProtocolError, SignatureError
from infernet.protocol.keys import (
    KeyFormatError,
    PublicKey,
    SecretKey,
    decode_npub,
    encode_npub,
    encode_nsec,
    peer_id_bytes,
    peer_id_to_base58,
)
from infernet.protocol.receipt import (
    VerifiedReceipt,
    decode_countersigned_receipt,
    decode_signed_receipt,
    verify_countersigned_receipt,
    verify_receipt,
)

__all__ = ["add_keys_commands", "check_user_key", "report_identity"]

RECEIPT_DIRS: Final = ("submitted", "pending", "rejected")
_RECEIPT_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,128}")


def add_keys_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``keys`` and its subcommands."""
    keys = sub.add_parser("keys", help="the user → node → model key chain")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    list_ = actions.add_parser("list", help="show the key chain on this machine")
    list_.add_argument("--json", action="store_true", help="print JSON")
    list_.set_defaults(func=_cmd_list)
    export = actions.add_parser("export", help="print one key")
    export.add_argument("which", choices=["user", "node", "model"], help="which key")
    export.add_argument("name", nargs="?", help="the model, for `export model NAME`")
    export.add_argument("--format", choices=["npub", "hex", "nsec"], default="npub",
                        help="npub (NIP-19, default), hex (32-byte x-only), or nsec: the "
                        "SECRET user or node key, for a backup")
    export.add_argument("--user-key", type=Path, metavar="FILE", help="the user key file")
    export.add_argument("--json", action="store_true", help="print JSON")
    export.set_defaults(func=_cmd_export)
    verify = actions.add_parser("verify", help="check the signatures of a receipt (CPR)")
    verify.add_argument("receipt", metavar="CPR_ID_OR_FILE",
                        help="a receipt file (canonical CBOR), or the id of a receipt in this "
                        "node's receipt store")
    verify.add_argument("--coordinator-key", metavar="HEX|NPUB",
                        help="require the countersignature of this coordinator key")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=_cmd_verify)
    rotate = actions.add_parser("rotate", help="replace the node key (signed by the old one)")
    rotate.add_argument("--force", action="store_true",
                        help="rotate even though a node answers on the control port")
    rotate.add_argument("--json", action="store_true", help="print JSON")
    rotate.set_defaults(func=_cmd_rotate)


# -- init ------------------------------------------------------------------------------------


def check_user_key(home: Path, override: Path | None) -> None:
    """Fail before anything is written when a user key file was named but is unusable.

    Raises:
        ConfigError: the named file (``--user-key`` or ``INFERNET_USER_KEY``) is missing,
            readable by others, or not a key.
    """
    path = user_key_path(home, override)
    if override is not None or path != home / USER_KEY_FILE:
        load_user_key(path)


def report_identity(home: Path, key: SecretKey, override: Path | None) -> None:
    """Delegate the node key from the user key (creating one if none exists) and say so.

    Raises:
        ConfigError: the user key file is unusable.
    """
    report = ensure_identity(home, key, int(time.time()), user_key_file=override)
    if report.created_user_key and report.user_key_file is not None:
        print(f"Created user key in {report.user_key_file}")
        print("  It is your master identity as an operator: it authorizes your nodes and "
              "signs owner commands.")
        print("  Back it up (`infernet keys export user --format nsec`) and move it off this "
              "machine;")
        print("  point INFERNET_USER_KEY or --user-key FILE at it when you need it.")
    if report.user_pubkey:
        print(f"User id: {encode_npub(PublicKey.from_hex(report.user_pubkey))}")
    if report.issued_delegation:
        print(f"Delegated this node from the user key: {home / DELEGATION_FILE} "
              "(serve, receipts, model_keys, commands; 1 year)")
    if report.warning:
        print(f"warning: {report.warning}", file=sys.stderr)


# -- list ------------------------------------------------------------------------------------


def _when(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _pub(pub: PublicKey) -> dict[str, str]:
    return {"npub": encode_npub(pub), "hex": pub.hex()}


def _node_key(home: Path) -> dict[str, Any]:
    key = load_node_key(home)  # refuses a missing, corrupt or world-readable key (exit 2)
    pub = key.public_key
    path = home / NODE_KEY_FILE
    return {**_pub(pub), "peer_id": peer_id_to_base58(peer_id_bytes(pub)), "file": str(path),
            "mode": f"{path.stat().st_mode & 0o777:04o}"}


def _user_and_delegation(home: Path, now: int) -> tuple[dict[str, Any] | None,
                                                         dict[str, Any] | None]:
    signed = load_delegation(home)
    path = user_key_path(home, None)
    user: dict[str, Any] | None = None
    if signed is not None:
        user = {**_pub(PublicKey.from_hex(signed.record.user_pubkey)), "file": None}
    if path.exists():
        try:
            key = load_user_key(path).public_key
        except ConfigError:
            key = None
        if key is not None and (user is None or user["hex"] == key.hex()):
            user = {**_pub(key), "file": str(path)}
    if signed is None:
        return user, None
    d = signed.record
    doc: dict[str, Any] = {"scope": list(d.scope), "issued_at": d.issued_at,
                           "expires_at": d.expires_at, "rotations": len(load_rotations(home)),
                           "file": str(home / DELEGATION_FILE), "valid": True, "problem": None}
    try:
        load_authority(home, now)
    except (ConfigError, SignatureError) as exc:
        doc.update(valid=False, problem=str(exc))
    return user, doc


def _served_models(home: Path) -> list[str]:
    """What this node serves: the config's list, else the running node's, else the built-in."""
    config = load_config(home)
    if config.served_models:
        return list(config.served_models)
    from infernet.cli.daemon import fetch_status

    status = fetch_status(home)
    if status is not None:
        return [str(m) for m in status.get("models", [])]
    if config.backend in ("auto", "embedded"):
        from infernet.backends.embedded import EMBEDDED_MODEL

        return [EMBEDDED_MODEL]
    return []


def _models(home: Path, node_key: SecretKey, now: int) -> list[dict[str, Any]]:
    for model in _served_models(home):
        ensure_model_key(home, node_key, model, "", now)  # created on first sight
    out = []
    for key_file in model_key_files(home):
        d = read_model_delegation(key_file)
        if d is None:
            continue
        out.append({"model": d.model, **_pub(PublicKey.from_hex(d.model_pubkey)),
                    "weights_hash": d.weights_hash or None, "expires_at": d.expires_at,
                    "delegated_by": d.node_pubkey, "file": str(key_file),
                    "current": d.node_pubkey == node_key.public_key.hex()})
    return out


def _retired(home: Path) -> list[dict[str, Any]]:
    from infernet.protocol.delegation import ROTATION_GRACE_S

    return [{"hex": r.record.old_pubkey, "npub": encode_npub(PublicKey.from_hex(
                 r.record.old_pubkey)), "rotated_at": r.record.rotated_at,
             "receipts_until": r.record.rotated_at + ROTATION_GRACE_S}
            for r in load_rotations(home)]


def _cmd_list(args: argparse.Namespace, home: Path) -> int:
    now = int(time.time())
    node = _node_key(home)
    user, delegation = _user_and_delegation(home, now)
    models = _models(home, load_node_key(home), now)
    retired = _retired(home)
    doc = {"user": user, "node": {**node, "delegation": delegation}, "models": models,
           "retired": retired}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    if user is None:
        print("User key:  none — run `infernet init` (or `infernet init --user-key FILE`) to "
              "delegate this node")
    else:
        print(f"User key:  {user['npub']}")
        print(f"           hex {user['hex']}")
        where = (f"secret in {user['file']}" if user["file"]
                 else "secret not on this machine (kept offline)")
        print(f"           {where}")
    print(f"└─ Node key:  {node['npub']}")
    print(f"              hex {node['hex']}")
    print(f"              peer id {node['peer_id']}")
    print(f"              secret in {node['file']} (mode {node['mode']}); back it up")
    if delegation is None:
        print("              not delegated by a user key yet")
    else:
        state = "valid" if delegation["valid"] else f"NOT VALID: {delegation['problem']}"
        print(f"              delegated for {', '.join(delegation['scope'])} until "
              f"{_when(delegation['expires_at'])} ({state}); "
              f"{delegation['rotations']} rotation(s)")
    for m in models:
        print(f"   └─ Model key {m['model']}: {m['npub']}")
        print(f"                hex {m['hex']}; delegated until {_when(m['expires_at'])}"
              + ("" if m["current"] else " (by an older node key: re-issued when served)"))
    for r in retired:
        print(f"Retired node key {r['npub']}: rotated {_when(r['rotated_at'])}, its receipts "
              f"redeemable until {_when(r['receipts_until'])}")
    return 0


# -- export ----------------------------------------------------------------------------------


def _cmd_export(args: argparse.Namespace, home: Path) -> int:
    if (args.which == "model") != (args.name is not None):
        raise ConfigError("give a model name with `keys export model NAME`, and only then")
    if args.format == "nsec" and args.which == "model":
        raise ConfigError("model keys are not exported as secrets; export user or node")
    secret: SecretKey | None = None
    if args.which == "node":
        secret = load_node_key(home)
        pub = secret.public_key
    elif args.which == "user":
        path = user_key_path(home, args.user_key)
        signed = load_delegation(home)
        if path.exists() or args.format == "nsec" or signed is None:
            secret = load_user_key(path)
            pub = secret.public_key
        else:
            pub = PublicKey.from_hex(signed.record.user_pubkey)  # the key itself is offline
    else:
        pub = _model_pub(home, args.name)
    if args.format == "nsec":
        assert secret is not None
        print(f"warning: this is the SECRET {args.which} key: anyone who sees it can act as "
              "you. Store it offline; never paste it anywhere.", file=sys.stderr)
        value = encode_nsec(secret)
    else:
        value = encode_npub(pub) if args.format == "npub" else pub.hex()
    print(json.dumps({"key": args.which, "name": args.name, "format": args.format,
                      "value": value}) if args.json else value)
    return 0


def _model_pub(home: Path, name: str) -> PublicKey:
    for key_file in model_key_files(home):
        d = read_model_delegation(key_file)
        if d is not None and d.model == name:
            return PublicKey.from_hex(d.model_pubkey)
    raise InfernetError(f"no model key for {name!r}: it is created when the node serves the "
                        "model, or by `infernet keys list`")


# -- verify ----------------------------------------------------------------------------------


def _public_key(text: str) -> PublicKey:
    try:
        return decode_npub(text) if text.startswith("npub1") else PublicKey.from_hex(text)
    except KeyFormatError as exc:
        raise ConfigError(f"--coordinator-key: {exc}; give 64 hex characters or an "
                          "npub1…") from None


def _verify_file(data: bytes, coordinator_key: str | None) -> VerifiedReceipt:
    """Verify ``data`` as a countersigned receipt, else as a node-signed one.

    Raises:
        ConfigError: it is neither (exit code 2).
        SignatureError: a signature does not check, or an untrusted countersigner.
    """
    try:
        countersigned = decode_countersigned_receipt(data)
    except RemoteProtocolError:
        try:
            signed = decode_signed_receipt(data)
        except RemoteProtocolError as exc:
            raise ConfigError(f"not a receipt file: {exc}") from None
        return verify_receipt(signed)
    trusted = (_public_key(coordinator_key) if coordinator_key
               else PublicKey.from_hex(countersigned.coordinator_pubkey))
    return verify_countersigned_receipt(countersigned, coordinator_keys={trusted})


def _receipt_file(home: Path, text: str) -> Path:
    """``text`` as a file, else the stored receipt of that id.

    Raises:
        InfernetError: neither a file nor a stored receipt id (exit code 1).
    """
    path = Path(text)
    if path.is_file():
        return path
    if _RECEIPT_ID.fullmatch(text) and text not in (".", ".."):
        for folder in RECEIPT_DIRS:
            stored = home / "receipts" / folder / f"{text}.cbor"
            if stored.is_file():
                return stored
    raise InfernetError(f"{text!r} is neither a receipt file nor the id of a receipt in "
                        f"{home / 'receipts'} (submitted, pending or rejected)")


def _cmd_verify(args: argparse.Namespace, home: Path) -> int:
    path = _receipt_file(home, args.receipt)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    verified = _verify_file(data, args.coordinator_key)
    r = verified.receipt
    doc = {
        "receipt_id": verified.receipt_id, "job_id": r.job_id, "model": r.model,
        "file": str(path),
        "node": verified.node.hex(), "node_npub": encode_npub(verified.node),
        "coordinator": verified.coordinator.hex() if verified.coordinator else None,
        "coordinator_trusted": bool(args.coordinator_key) and verified.coordinator is not None,
        "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
        "value": str(r.value), "currency": r.currency, "chain": r.chain,
        "completed_at": r.completed_at,
    }
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"Receipt {verified.receipt_id}: job {r.job_id}, {r.model}, {r.input_tokens} in + "
          f"{r.output_tokens} out tokens, {r.value} {r.currency} on {r.chain}")
    print(f"[OK] node signature by {encode_npub(verified.node)}")
    if verified.coordinator is None:
        print("[--] not countersigned yet: it counts for payout once the coordinator signs it")
    elif args.coordinator_key:
        print(f"[OK] countersigned by the coordinator {verified.coordinator.hex()}")
    else:
        print(f"[OK] countersigned by {verified.coordinator.hex()} (pass --coordinator-key "
              "to require your coordinator's key)")
    return 0


# -- rotate ----------------------------------------------------------------------------------


def _cmd_rotate(args: argparse.Namespace, home: Path) -> int:
    from infernet.cli.daemon import fetch_status

    load_node_key(home)  # a missing or loose key is bad input (exit 2) before anything else
    if not args.force and fetch_status(home) is not None:
        raise InfernetError("a node is running from this home: stop it first (`infernet "
                            "stop`), or pass --force and restart it right after")
    rotated = rotate_node_key(home, int(time.time()))
    registration = _re_register(home, rotated.new)
    peer_id = peer_id_to_base58(peer_id_bytes(rotated.new.public_key))
    doc = {"old": _pub(rotated.old), "new": {**_pub(rotated.new.public_key), "peer_id": peer_id},
           "retired_file": str(rotated.retired_file), "receipts_until": rotated.grace_until,
           "registered": registration}
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"Rotated the node key: {encode_npub(rotated.old)} → "
          f"{encode_npub(rotated.new.public_key)}")
    print(f"New peer id: {peer_id}")
    print(f"The old key is kept in {rotated.retired_file}; receipts it signed stay "
          f"redeemable for 24 h (until {_when(rotated.grace_until)}).")
    if registration.get("error"):
        print(f"warning: could not re-register with the coordinator: {registration['error']}"
              "; the node registers itself when it starts", file=sys.stderr)
    elif registration.get("node_id"):
        print("Re-registered with the coordinator.")
    print("Restart the node to serve under the new key.")
    return 0


def _re_register(home: Path, key: SecretKey) -> dict[str, Any]:
    config = load_config(home)
    if not config.coordinator_url:
        return {}
    import trio

    from infernet.node.registration import register_node

    try:
        return trio.run(register_node, home, config, key)
    except InfernetError as exc:
        return {"error": str(exc)}
