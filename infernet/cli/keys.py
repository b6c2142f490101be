"""``infernet keys list``, ``keys export node --format hex|npub`` and ``keys verify FILE``.

Owns: showing the node's public identity (the x-only secp256k1 key as hex and as NIP-19
``npub1…``, and the libp2p peer id derived from it) and where its secret lives, and checking
a Compute Payment Receipt file offline (`infernet.protocol.receipt`: the node signature, and
the coordinator countersignature when there is one). Only public keys are ever printed: the
secret key stays in its 0600 file.

Exit codes of ``verify``: 0 when every signature checks, 1 when one does not (or the
countersigner is not the ``--coordinator-key`` given), 2 when the file is not a receipt.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from infernet.node.config import NODE_KEY_FILE, ConfigError, load_node_key
from infernet.protocol.errors import RemoteProtocolError
from infernet.protocol.keys import (
    KeyFormatError,
    PublicKey,
    decode_npub,
    encode_npub,
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

__all__ = ["add_keys_commands"]


def add_keys_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``keys`` and its subcommands."""
    keys = sub.add_parser("keys", help="show the node's public keys")
    actions = keys.add_subparsers(dest="action", required=True, metavar="ACTION")
    list_ = actions.add_parser("list", help="list the keys on this machine")
    list_.add_argument("--json", action="store_true", help="print JSON")
    list_.set_defaults(func=_cmd_list)
    export = actions.add_parser("export", help="print one public key")
    export.add_argument("which", choices=["node"], help="which key (node)")
    export.add_argument("--format", choices=["npub", "hex"], default="npub",
                        help="npub (NIP-19 bech32, default) or hex (32-byte x-only)")
    export.add_argument("--json", action="store_true", help="print JSON")
    export.set_defaults(func=_cmd_export)
    verify = actions.add_parser("verify", help="check the signatures of a receipt (CPR) file")
    verify.add_argument("file", type=Path, help="a node-signed or countersigned receipt "
                        "(canonical CBOR, as the node and the coordinator store it)")
    verify.add_argument("--coordinator-key", metavar="HEX|NPUB",
                        help="require the countersignature of this coordinator key")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=_cmd_verify)


def _node_key(home: Path) -> dict[str, Any]:
    key = load_node_key(home)  # refuses a missing, corrupt or world-readable key (exit 2)
    pub = key.public_key
    path = home / NODE_KEY_FILE
    return {"npub": encode_npub(pub), "hex": pub.hex(),
            "peer_id": peer_id_to_base58(peer_id_bytes(pub)), "file": str(path),
            "mode": f"{path.stat().st_mode & 0o777:04o}"}


def _cmd_list(args: argparse.Namespace, home: Path) -> int:
    node = _node_key(home)
    if args.json:
        print(json.dumps({"node": node}, indent=2))
        return 0
    print(f"Node key:  {node['npub']}")
    print(f"           hex {node['hex']}")
    print(f"           peer id {node['peer_id']}")
    print(f"           secret in {node['file']} (mode {node['mode']}); back it up")
    return 0


def _cmd_export(args: argparse.Namespace, home: Path) -> int:
    node = _node_key(home)
    value = node[args.format]
    print(json.dumps({"key": args.which, "format": args.format, "value": value})
          if args.json else value)
    return 0


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


def _cmd_verify(args: argparse.Namespace, home: Path) -> int:
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {args.file}: {exc.strerror}") from None
    verified = _verify_file(data, args.coordinator_key)
    r = verified.receipt
    doc = {
        "receipt_id": verified.receipt_id, "job_id": r.job_id, "model": r.model,
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
