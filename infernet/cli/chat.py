"""``infernet chat``: one question to the network, straight to a peer or through a coordinator.

``--peer MULTIADDR`` opens a throwaway libp2p host and runs the job protocol on that node;
``--coordinator URL`` (default ``$INFERNET_COORDINATOR`` or ``http://127.0.0.1:8080``) uses the
OpenAI-compatible API with ``--token`` or ``$INFERNET_TOKEN``. Text streams to stdout; a
usage line goes to stderr (``--json`` prints one JSON object instead).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import aclosing
from typing import TYPE_CHECKING

from infernet.protocol.errors import InfernetError

if TYPE_CHECKING:
    from infernet.client import ChatResult

__all__ = ["add_chat_command", "run_chat"]

DEFAULT_PEER_MODEL = "gemma3-270m"


def add_chat_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``chat`` on the CLI's subparsers."""
    chat = sub.add_parser("chat", help="ask the network one question")
    chat.add_argument("prompt")
    chat.add_argument("--model", help="model name (default: the coordinator's first, or "
                      f"{DEFAULT_PEER_MODEL} with --peer)")
    where = chat.add_mutually_exclusive_group()
    where.add_argument("--peer", metavar="MULTIADDR", help="a node's /ip4/…/tcp/…/p2p/… address")
    where.add_argument("--coordinator", metavar="URL", help="a coordinator's base URL")
    chat.add_argument("--token", help="coordinator API token (default $INFERNET_TOKEN)")
    chat.add_argument("--max-tokens", type=int)
    chat.add_argument("--e2e", action="store_true",
                      help="with --peer: seal the prompt and the answer end to end (NIP-44)")
    chat.add_argument("--json", action="store_true", help="print one JSON object at the end")


def _finish(result: ChatResult, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"text": result.text, "prompt_tokens": result.prompt_tokens,
                          "completion_tokens": result.completion_tokens,
                          "finish_reason": result.finish_reason, "node": result.node_pubkey,
                          "receipt_id": result.receipt_id or None}))
    else:
        print()
        print(f"({result.prompt_tokens} prompt + {result.completion_tokens} completion tokens; "
              f"node {result.node_pubkey[:16]})", file=sys.stderr)


async def run_chat(args: argparse.Namespace) -> int:
    """Run the ``chat`` command; exit code 0 on success.

    Raises:
        InfernetError: the job failed (the CLI prints its code and message).
    """
    # Imported here: the client pulls in libp2p (~1 s), which no other command should pay.
    from infernet.client import ChatResult, coordinator_chat, open_peer_client

    def emit(text: str) -> None:
        if not args.json:
            sys.stdout.write(text)
            sys.stdout.flush()

    if args.peer:
        async with open_peer_client(args.peer) as client:
            async with aclosing(client.stream_chat(args.model or DEFAULT_PEER_MODEL, args.prompt,
                                                   max_tokens=args.max_tokens,
                                                   encrypt=args.e2e)) as stream:
                async for text in stream:
                    emit(text)
            if client.result is None:
                raise InfernetError("the node sent no result")
            _finish(client.result, args.json)
        return 0
    if args.e2e:
        raise InfernetError("--e2e needs --peer: sealed jobs go straight to a node",
                            code="bad_request")
    url = args.coordinator or os.environ.get("INFERNET_COORDINATOR", "http://127.0.0.1:8080")
    token = args.token or os.environ.get("INFERNET_TOKEN", "")
    if not token:
        raise InfernetError("no API token: pass --token or set INFERNET_TOKEN",
                            code="unauthorized")
    async with aclosing(coordinator_chat(url, token, args.model, args.prompt,
                                         max_tokens=args.max_tokens)) as events:
        async for item in events:
            if isinstance(item, ChatResult):
                _finish(item, args.json)
            else:
                emit(item)
    return 0
