"""``infernet register``: tell the coordinator which user key authorizes this node.

Owns: the command only; the call is `infernet.node.registration.register_node` (shared with
``infernet setup`` and the daemon, which registers itself when it starts). Exit codes: 0
registered; 1 the coordinator is unreachable or refuses (for example because it has not
seen this node announce yet); 2 no coordinator configured, or no delegation on disk.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import msgspec
import trio

from infernet.node.config import load_config, load_node_key

__all__ = ["add_register_command"]


def add_register_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``infernet register``."""
    p = sub.add_parser("register", help="register this node (and its user key) with the "
                       "coordinator")
    p.add_argument("--coordinator", metavar="URL",
                   help="coordinator to register with (default: coordinator_url in the config)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_register)


def _cmd_register(args: argparse.Namespace, home: Path) -> int:
    from infernet.node.registration import register_node

    config = load_config(home)
    if args.coordinator:
        config = msgspec.structs.replace(config, coordinator_url=args.coordinator)
    key = load_node_key(home)
    doc = trio.run(register_node, home, config, key)
    if args.json:
        print(json.dumps({"coordinator": config.coordinator_url, **doc}, indent=2))
        return 0
    print(f"Registered node {doc.get('node_npub', key.public_key.hex())} with "
          f"{config.coordinator_url}")
    print(f"Authorized by user {doc.get('user_npub', doc.get('user_pubkey'))} for "
          f"{', '.join(doc.get('scope', []))}")
    return 0
