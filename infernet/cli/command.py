"""``infernet command install|remove MODEL --node KEY``: owner commands signed by the user key.

Owns: building and signing an `OwnerCommand` with the user key (``keys/user.key``,
``INFERNET_USER_KEY`` or ``--user-key FILE``) and delivering it (``specs/keys.md`` §5):
straight to the node over the mesh (``--peer MULTIADDR``, `/infernet/owner/1.0.0`), or
through the coordinator's queue (``--coordinator URL``, default the config's
``coordinator_url``), where it waits until the node polls, runs and acknowledges it.

Exit codes: 0 the node ran the command (or, with ``--no-wait``, the coordinator queued it);
1 the node refused it or it failed, the peer or coordinator is unreachable or refuses, or no
outcome arrived within ``--timeout``; 2 bad input (a malformed key or multiaddr, a missing
user key, no way to reach the node).
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import time
from pathlib import Path
from typing import Any, Final

import httpx
import trio

from infernet.node.config import ConfigError, load_config
from infernet.node.identity import load_user_key, user_key_path
from infernet.protocol.delegation import OwnerCommand, Signed, encode_signed, sign_record
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import (
    KeyFormatError,
    PublicKey,
    decode_npub,
    encode_npub,
    peer_id_bytes,
    peer_id_to_base58,
)
from infernet.protocol.owner import CommandResult, command_id

__all__ = ["add_command_commands"]

HTTP_TIMEOUT: Final = 10.0
POLL_EVERY: Final = 1.0
_ACTIONS: Final = {"install": "model_install", "remove": "model_remove"}


def add_command_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``infernet command install|remove``."""
    cmd = sub.add_parser("command", help="send an owner command (signed by your user key) to "
                         "one of your nodes")
    actions = cmd.add_subparsers(dest="owner_action", required=True, metavar="ACTION")
    for name, text in (("install", "install a model on the node and serve it"),
                       ("remove", "stop serving a model on the node and delete it")):
        p = actions.add_parser(name, help=text)
        p.add_argument("model", help="the model name, as `infernet model install` takes it")
        p.add_argument("--node", required=True, metavar="NPUB_OR_HEX",
                       help="the node's public key (`infernet keys export node` on it)")
        via = p.add_mutually_exclusive_group()
        via.add_argument("--peer", metavar="MULTIADDR",
                         help="send it straight to the node over libp2p (…/p2p/<peer id>)")
        via.add_argument("--coordinator", metavar="URL",
                         help="queue it at this coordinator (default: coordinator_url)")
        p.add_argument("--user-key", type=Path, metavar="FILE",
                       help="the user key (default: INFERNET_USER_KEY, else keys/user.key)")
        p.add_argument("--timeout", type=float, default=180.0, metavar="SECONDS",
                       help="how long to wait for the node's answer (default 180)")
        p.add_argument("--no-wait", action="store_true",
                       help="with a coordinator: return once the command is queued")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.set_defaults(func=_cmd_command)


def _node_key(text: str) -> PublicKey:
    try:
        return decode_npub(text) if text.startswith("npub1") else PublicKey.from_hex(text)
    except KeyFormatError as exc:
        raise ConfigError(f"--node: {exc}; give the node's npub1… or 64 hex characters") from None


def _cmd_command(args: argparse.Namespace, home: Path) -> int:
    node = _node_key(args.node)
    if args.peer:
        from infernet.mesh.host import parse_peer_multiaddr

        peer_id, _ = parse_peer_multiaddr(args.peer)  # malformed: bad_request before signing
        if peer_id != peer_id_to_base58(peer_id_bytes(node)):
            raise ConfigError(f"--peer {args.peer} is another node than --node "
                              f"{encode_npub(node)} (its peer id is {peer_id})")
    coordinator = "" if args.peer else (args.coordinator or load_config(home).coordinator_url)
    if not args.peer and not coordinator:
        raise ConfigError("say where the node is: --peer MULTIADDR, --coordinator URL, or set "
                          "coordinator_url in the config")
    user = load_user_key(user_key_path(home, args.user_key))
    signed = sign_record(OwnerCommand(
        action=_ACTIONS[args.owner_action], user_pubkey=user.public_key.hex(),  # type: ignore[arg-type]
        node_pubkey=node.hex(), model=args.model, issued_at=int(time.time()),
        nonce=secrets.token_hex(16)), user)
    if args.peer:
        result = trio.run(_via_peer, args.peer, signed, args.timeout)
        doc: dict[str, Any] = {"id": result.command_id or command_id(signed), "via": "peer",
                               "status": result.status, "code": result.code or None,
                               "message": result.message,
                               "served_models": list(result.served_models)}
    else:
        doc = trio.run(_via_coordinator, coordinator, node, signed, args.timeout, args.no_wait)
    return _render(args, doc)


async def _via_peer(addr: str, signed: Signed[OwnerCommand], timeout: float) -> CommandResult:
    from infernet.mesh.host import open_host
    from infernet.mesh.owner import send_owner_command
    from infernet.protocol.keys import SecretKey

    key = SecretKey.generate().even_y()  # a throwaway transport identity: the user key signs
    async with open_host(key.secret_bytes(), listen_host="127.0.0.1", port=0) as mesh:
        peer_id = await mesh.connect(addr)
        return await send_owner_command(mesh, peer_id, encode_signed(signed), timeout=timeout)


async def _via_coordinator(url: str, node: PublicKey, signed: Signed[OwnerCommand],
                           timeout: float, no_wait: bool) -> dict[str, Any]:
    body = {"command": base64.b64encode(encode_signed(signed)).decode()}
    target = f"/api/v1/user/nodes/{node.hex()}/commands"
    async with httpx.AsyncClient(base_url=url.rstrip("/"), timeout=HTTP_TIMEOUT) as client:
        doc = await _call(client, "POST", target, body)
        deadline = trio.current_time() + timeout
        while doc.get("status") == "pending" and not no_wait:
            if trio.current_time() >= deadline:
                raise InfernetError(f"queued as {doc.get('id')}, but the node did not answer "
                                    f"within {timeout:.0f} s; it runs the command when it "
                                    "next polls", code="timeout")
            await trio.sleep(POLL_EVERY)  # the node acknowledges asynchronously: poll its state
            doc = await _call(client, "GET", f"{target}/{doc['id']}")
    return {"via": "coordinator", **doc}


async def _call(client: httpx.AsyncClient, method: str, path: str,
                body: dict[str, Any] | None = None) -> dict[str, Any]:
    try:
        r = await client.request(method, path, json=body)
    except httpx.HTTPError as exc:
        raise InfernetError(f"coordinator {client.base_url} is unreachable ({exc!r})",
                            code="node_disconnected") from None
    try:
        doc = r.json()
    except ValueError:
        doc = {}
    if r.status_code >= 400 or not isinstance(doc, dict):
        message = doc.get("error_message") if isinstance(doc, dict) else None
        raise InfernetError(f"coordinator refused the command: {message or r.status_code}",
                            code="unauthorized" if r.status_code == 401 else "internal_error")
    return doc


def _render(args: argparse.Namespace, doc: dict[str, Any]) -> int:
    ok = doc.get("status") == "done" or (args.no_wait and doc.get("status") == "pending")
    if args.json:
        print(json.dumps(doc, indent=2))
    elif doc.get("status") == "pending":
        print(f"Queued {args.owner_action} {args.model} as {doc.get('id')}; the node runs it "
              "when it next polls the coordinator.")
    elif doc.get("status") == "done":
        print(f"Node ran {args.owner_action} {args.model}: {doc.get('message') or 'done'}")
    else:
        print(f"error: node {doc.get('status')} the command: {doc.get('message')} "
              f"[{doc.get('code')}]", file=sys.stderr)
    return 0 if ok else 1
