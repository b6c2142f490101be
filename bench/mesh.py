"""Mesh benchmarks, real libp2p hosts on loopback in one process (ratios within one run).

1. Gossip propagation: N hosts in a connected random graph (each dials up to 3 earlier ones);
   messages from random hosts; time until every other host has it — p50/p95 for N = 3, 10, 30.
2. Relayed vs direct job: tokens/s of the same long answer from an instant engine, client →
   node vs client → relay → node (goal ≥ 0.98).
3. New job stream on an open connection: open, one request/accepted round trip, close.

    python -m bench.mesh [--quick]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, aclosing
from typing import Any

import trio

from infernet.backends.base import ChatRequest, ModelInfo, StreamItem, TextDelta, Usage
from infernet.mesh.gossip import ANNOUNCE_TOPIC
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.jobs import JOB_PROTOCOL, open_job, serve_job_stream
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
from infernet.protocol.frames import JobRequest, Message
from infernet.protocol.keys import SecretKey


class InstantEngine:
    """Yields ``n`` one-word deltas as fast as the consumer takes them."""

    name = "instant"

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    async def health(self) -> bool:
        return True

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(name="m")]

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        for _ in range(self.tokens):
            yield TextDelta(text="tok ")
            await trio.lowlevel.checkpoint()
        yield Usage(prompt_tokens=1, completion_tokens=self.tokens)


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def _hosts(stack: AsyncExitStack, n: int) -> list[MeshHost]:
    return [await stack.enter_async_context(open_host(
        SecretKey.generate().even_y().secret_bytes(), listen_host="127.0.0.1", port=0))
        for _ in range(n)]


async def gossip_propagation(n: int, messages: int) -> tuple[float, float]:
    async with AsyncExitStack() as stack:
        hosts = await _hosts(stack, n)
        subs = [await h.pubsub.subscribe(ANNOUNCE_TOPIC) for h in hosts]
        rng = random.Random(n)
        for i in range(1, n):
            for j in rng.sample(range(i), min(3, i)):
                await hosts[i].connect(hosts[j].listen_addrs()[0])
        with trio.fail_after(30):  # every host grafted into the topic mesh
            while any(not h.pubsub.router.mesh.get(ANNOUNCE_TOPIC) for h in hosts):  # noqa: ASYNC110
                await trio.sleep(0.1)
        await trio.sleep(2)  # two heartbeats: let meshes settle to their degree
        times: list[float] = []
        for k in range(messages):
            src = rng.randrange(n)
            payload = f"m{k}".encode()
            start = trio.current_time()
            await hosts[src].pubsub.publish(ANNOUNCE_TOPIC, payload)
            with trio.fail_after(10):
                for i, sub in enumerate(subs):
                    if i == src:
                        continue
                    while (await sub.get()).data != payload:
                        pass
            times.append((trio.current_time() - start) * 1000)
            for sub in subs:  # drain our own copy
                with trio.move_on_after(0):
                    while True:
                        await sub.get()
        return statistics.median(times), _pct(times, 0.95)


def _announce(key: SecretKey) -> Any:
    now = int(time.time())
    caps = Capabilities(backend="instant", models=(ModelOffer(name="m"),), slots_total=4,
                        slots_free=4, expires_at=now + 60)
    return parse_announcement(encode_event(build_announcement(caps, key, now)), now=now,
                              sender_pubkey=key.public_key)


async def _tokens_per_s(client: MeshHost, target: MeshHost, tokens: int) -> float:
    req = JobRequest(job_id=f"b{random.random()}", model="m",
                     messages=(Message(role="user", content="go"),))
    start = trio.current_time()
    async with open_job(client, target.peer_id, req) as call:
        await call.accepted(10)
        async with aclosing(call.chunks()) as chunks:
            async for _ in chunks:
                pass
    assert call.final is not None
    return call.final.completion_tokens / (trio.current_time() - start)


async def relay_vs_direct(tokens: int, rounds: int) -> tuple[float, float]:
    async with AsyncExitStack() as stack:
        relay_host, node, client = await _hosts(stack, 3)
        node_key = SecretKey.generate()
        node_exec = JobExecutor(InstantEngine(tokens), {"m"}, 4, node_key.public_key.hex())
        table = PeerTable()
        relay = Relay(relay_host, table, "relay")
        relay_exec = JobExecutor(InstantEngine(tokens), set(), 4, "relay", relay=relay)
        node.host.set_stream_handler(JOB_PROTOCOL, lambda s: serve_job_stream(s, node_exec.run))
        relay_host.host.set_stream_handler(
            JOB_PROTOCOL, lambda s: serve_job_stream(s, relay_exec.run))
        await relay_host.connect(node.listen_addrs()[0])
        table.update(_announce(node_key), node.peer_id, trio.current_time(), connected=True)
        await client.connect(node.listen_addrs()[0])
        await client.connect(relay_host.listen_addrs()[0])
        direct, relayed = [], []
        for _ in range(rounds):  # interleaved, best of each
            direct.append(await _tokens_per_s(client, node, tokens))
            relayed.append(await _tokens_per_s(client, relay_host, tokens))
        return max(direct), max(relayed)


async def stream_latency(rounds: int) -> float:
    async with AsyncExitStack() as stack:
        node, client = await _hosts(stack, 2)
        executor = JobExecutor(InstantEngine(1), {"m"}, 4, "n")
        node.host.set_stream_handler(JOB_PROTOCOL, lambda s: serve_job_stream(s, executor.run))
        await client.connect(node.listen_addrs()[0])
        times = []
        for i in range(rounds):
            req = JobRequest(job_id=f"s{i}", model="m", messages=(Message(role="user",
                                                                          content="x"),))
            start = trio.current_time()
            async with open_job(client, node.peer_id, req) as call:
                await call.accepted(10)
                times.append((trio.current_time() - start) * 1000)
                async with aclosing(call.chunks()) as chunks:
                    async for _ in chunks:
                        pass
        return statistics.median(times)


async def run(quick: bool) -> None:
    sizes = (3, 10) if quick else (3, 10, 30)
    print("gossip propagation to every other host")
    for n in sizes:
        p50, p95 = await gossip_propagation(n, 5 if quick else 30)
        print(f"  {n:>3} hosts: p50 {p50:6.1f} ms  p95 {p95:6.1f} ms")
    direct, relayed = await relay_vs_direct(500 if quick else 5000, 2 if quick else 5)
    print(f"job tokens/s: direct {direct:,.0f}, relayed {relayed:,.0f}, "
          f"ratio relayed/direct {relayed / direct:.2f}")
    print(f"new job stream + accepted on an open connection: p50 "
          f"{await stream_latency(10 if quick else 100):.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mesh benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny run (a smoke test)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    trio.run(run, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
