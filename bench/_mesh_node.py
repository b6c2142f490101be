"""One benchmark peer in its own process: a node on a synthetic engine, or a relay.

    python -m bench._mesh_node node  --key HEX [--tokens N] [--rate TOK_S] [--max-batch B]
    python -m bench._mesh_node relay --key HEX --node-addr MULTIADDR --node-key HEX
    python -m bench._mesh_node gossip --key HEX [--node-addr MULTIADDR ...]

A gossip peer subscribes to the announcement topic, dials the given peers, and prints
``GOT <payload> <CLOCK_MONOTONIC ns>`` for every message (the clock is system-wide, so the
parent can subtract its own send time).

Prints ``READY <multiaddr>`` once it serves, then runs until its stdin closes. The relay is
told the node's key so it can put the node's signed announcement in its peer table without
the gossip warm-up (a benchmark shortcut; real relays learn it from gossip).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import trio

from infernet.backends.base import ChatRequest, ModelInfo, StreamItem, TextDelta, Usage
from infernet.mesh.gossip import ANNOUNCE_TOPIC
from infernet.mesh.host import open_host
from infernet.mesh.jobs import JOB_PROTOCOL, serve_job_stream
from infernet.mesh.peer_table import PeerTable
from infernet.node.jobs import JobExecutor
from infernet.node.relay import Relay
from infernet.protocol.announce import (
    Capabilities,
    ModelOffer,
    build_announcement,
    parse_announcement,
)
from infernet.protocol.event import encode_event
from infernet.protocol.keys import SecretKey


class SyntheticEngine:
    """``tokens`` one-word deltas, as fast as taken (``rate`` 0) or paced at ``rate`` tok/s."""

    name = "synthetic"

    def __init__(self, tokens: int, rate: float) -> None:
        self.tokens = tokens
        self.rate = rate

    async def health(self) -> bool:
        return True

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(name="m")]

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        start = trio.current_time()
        for i in range(self.tokens):
            if self.rate:  # an engine's pace, not a wait for an event
                await trio.sleep_until(start + i / self.rate)
            else:
                await trio.lowlevel.checkpoint()
            yield TextDelta(text="tok ")
        yield Usage(prompt_tokens=1, completion_tokens=self.tokens)


def _announcement(key: SecretKey) -> Any:
    now = int(time.time())
    caps = Capabilities(backend="synthetic", models=(ModelOffer(name="m"),), slots_total=8,
                        slots_free=8, expires_at=now + 3600)
    return parse_announcement(encode_event(build_announcement(caps, key, now)), now=now,
                              sender_pubkey=key.public_key)


async def _gossip(mesh: Any, peers: list[str]) -> None:
    sub = await mesh.pubsub.subscribe(ANNOUNCE_TOPIC)
    for addr in peers:
        await mesh.connect(addr)
    print("READY", mesh.listen_addrs()[0], flush=True)
    async with trio.open_nursery() as nursery:
        async def relay_stdin_eof() -> None:
            await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)
            nursery.cancel_scope.cancel()

        nursery.start_soon(relay_stdin_eof)
        while True:
            message = await sub.get()
            print("GOT", message.data.decode(), time.monotonic_ns(), flush=True)


async def _serve(args: argparse.Namespace) -> None:
    key = SecretKey.from_hex(args.key)
    async with open_host(key.secret_bytes(), listen_host="127.0.0.1", port=0) as mesh:
        if args.role == "gossip":
            await _gossip(mesh, args.node_addr)
            return
        if args.role == "node":
            executor = JobExecutor(SyntheticEngine(args.tokens, args.rate), {"m"}, 8,
                                   key.public_key.hex(), max_batch=args.max_batch)
        else:
            table = PeerTable(offline_after=1e9)
            node_peer = await mesh.connect(args.node_addr[0])
            table.update(_announcement(SecretKey.from_hex(args.node_key)), node_peer,
                         trio.current_time(), connected=True)
            executor = JobExecutor(SyntheticEngine(0, 0), set(), 8, key.public_key.hex(),
                                   relay=Relay(mesh, table, key.public_key.hex()))

        async def handle(stream: Any) -> None:
            await serve_job_stream(stream, executor.run)

        mesh.host.set_stream_handler(JOB_PROTOCOL, handle)
        print("READY", mesh.listen_addrs()[0], flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["node", "relay", "gossip"])
    parser.add_argument("--key", required=True)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--node-addr", action="append", default=[])
    parser.add_argument("--node-key", default="")
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    trio.run(_serve, parser.parse_args())


if __name__ == "__main__":
    main()
