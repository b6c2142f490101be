"""``infernet keys list`` and ``infernet keys export node --format hex|npub``.

Owns: showing the node's public identity (the x-only secp256k1 key as hex and as NIP-19
``npub1…``, and the libp2p peer id derived from it) and where its secret lives. Only public
keys are ever printed: the secret key stays in its 0600 file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from infernet.node.config import NODE_KEY_FILE, load_node_key
from infernet.protocol.keys import encode_npub, peer_id_bytes, peer_id_to_base58

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
