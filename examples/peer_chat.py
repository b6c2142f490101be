"""Ask one node straight over libp2p — no coordinator — sealed end to end.

Start a node (`infernet start`, or `make run`), copy the multiaddr from its log line
"listening on /ip4/…/tcp/…/p2p/…", then:

    python examples/peer_chat.py /ip4/127.0.0.1/tcp/46337/p2p/16Uiu2HA... "What is 2 + 2?"

The prompt and every token are NIP-44-encrypted between a throwaway key of this script and
the serving node (a relay in between sees ciphertext only); the node's signed receipt is
checked against what was sent and received before the result is printed.
"""

from __future__ import annotations

import sys

import trio

from infernet.client import open_peer_client

MODEL = "gemma3-270m"  # the embedded engine's model; use any model the network serves


async def main(addr: str, question: str) -> None:
    async with open_peer_client(addr) as node:
        async for text in node.stream_chat(MODEL, question, encrypt=True):
            print(text, end="", flush=True)
        result = node.result
    assert result is not None
    print(f"\n  {result.prompt_tokens} prompt + {result.completion_tokens} completion tokens; "
          f"served by node {result.node_pubkey[:16]}…, receipt {result.receipt_id[:16]}…")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: peer_chat.py MULTIADDR [QUESTION]")
    trio.run(main, sys.argv[1],
             sys.argv[2] if len(sys.argv) > 2 else "What is the capital of France?")
