"""Mesh benchmarks across processes: each peer in its own process, as deployed.

1. Gossip propagation: a message published by one peer until every other peer process has
   it, p50/p95, for 3, 10 and 30 processes (each dials up to 3 earlier ones at random).
2. Relayed ÷ direct job tokens/s (goal ≥ 0.98): client → node vs client → relay → node, on
   an engine paced like a fast GPU (default 500 tok/s) and on an instant one (CPU-bound:
   with 2 cores the relay's work competes with the node's and the client's).
3. Frames per connection with batching (up to 64 deltas per chunk frame, the default) vs
   without (one frame per delta): tokens/s and frames/s from an instant engine.

    python -m bench.mesh_procs [--quick]
"""

from __future__ import annotations

import argparse
import logging
import random
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import aclosing, contextmanager
from typing import Any

import trio

from infernet.mesh.gossip import ANNOUNCE_TOPIC
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.jobs import open_job
from infernet.protocol.frames import JobRequest, Message
from infernet.protocol.keys import SecretKey


@contextmanager
def _peer(*args: str) -> Iterator[str]:
    """Start ``bench._mesh_node`` with ``args``; yield its multiaddr; stop it on exit."""
    proc = subprocess.Popen([sys.executable, "-m", "bench._mesh_node", *args],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    try:
        line = proc.stdout.readline()  # blocks until the peer prints READY (or dies)
        if not line.startswith("READY "):
            raise SystemExit(f"peer {args[0]} failed to start: {line!r}")
        yield line.split()[1]
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


async def _job(client: MeshHost, peer_id: str) -> tuple[float, int, int]:
    """Run one job; return (seconds, tokens, chunk frames)."""
    req = JobRequest(job_id=f"b{random.random()}", model="m",
                     messages=(Message(role="user", content="go"),))
    frames = 0
    start = trio.current_time()
    async with open_job(client, peer_id, req) as call:
        await call.accepted(30)
        async with aclosing(call.chunk_frames()) as chunks:
            async for _ in chunks:
                frames += 1
    assert call.final is not None
    return trio.current_time() - start, call.final.completion_tokens, frames


async def _relay_ratio(node_addr: str, relay_addr: str, rounds: int) -> tuple[float, float]:
    async with open_host(SecretKey.generate().even_y().secret_bytes(),
                         listen_host="127.0.0.1", port=0) as client:
        node = await client.connect(node_addr)
        relay = await client.connect(relay_addr)
        await _job(client, node)  # warm both paths
        await _job(client, relay)
        direct, relayed = [], []
        for _ in range(rounds):  # interleaved so drift hits both alike
            secs, toks, _ = await _job(client, node)
            direct.append(toks / secs)
            secs, toks, _ = await _job(client, relay)
            relayed.append(toks / secs)
    direct.sort()
    relayed.sort()
    return direct[len(direct) // 2], relayed[len(relayed) // 2]


async def _frames(addr: str, rounds: int) -> tuple[float, float]:
    async with open_host(SecretKey.generate().even_y().secret_bytes(),
                         listen_host="127.0.0.1", port=0) as client:
        peer = await client.connect(addr)
        await _job(client, peer)
        best = (0.0, 0.0)
        for _ in range(rounds):
            secs, toks, frames = await _job(client, peer)
            best = max(best, (toks / secs, frames / secs))
    return best


async def _publish_and_time(n: int, messages: int, rng: random.Random, procs: list[Any],
                            ready: dict[int, str], got: dict[str, dict[int, int]],
                            read: Any, until: Any) -> list[float]:
    async with open_host(SecretKey.generate().even_y().secret_bytes(),
                         listen_host="127.0.0.1", port=0) as parent, \
            trio.open_nursery() as nursery:
        await parent.pubsub.subscribe(ANNOUNCE_TOPIC)
        addrs = [parent.listen_addrs()[0]]
        for i in range(1, n):
            dials = [a for peer in rng.sample(addrs, min(3, len(addrs)))
                     for a in ("--node-addr", peer)]
            proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "bench._mesh_node", "gossip", "--key",
                 SecretKey.generate().even_y().secret_bytes().hex(), *dials],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            procs.append(proc)
            nursery.start_soon(read, i, proc.stdout)
            await until(lambda i=i: i in ready, 60)
            addrs.append(ready[i])
        warm = 0
        with trio.fail_after(120):  # every process grafted into the topic mesh
            while not any(len(got[f"warm{k}"]) == n - 1 for k in range(warm)):
                await parent.pubsub.publish(ANNOUNCE_TOPIC, f"warm{warm}".encode())
                warm += 1
                await trio.sleep(0.5)  # one message per half second until the mesh is whole
        times = []
        for k in range(messages):
            payload = f"m{k}"
            start = time.monotonic_ns()
            await parent.pubsub.publish(ANNOUNCE_TOPIC, payload.encode())
            await until(lambda p=payload: len(got[p]) == n - 1, 20)
            times.append((max(got[payload].values()) - start) / 1e6)
        nursery.cancel_scope.cancel()
    return times


async def _gossip(n: int, messages: int) -> tuple[float, float]:
    """Publish from this process to ``n - 1`` peer processes; return p50/p95 ms to all."""
    rng = random.Random(n)
    ready: dict[int, str] = {}
    got: dict[str, dict[int, int]] = defaultdict(dict)  # payload → peer → monotonic ns
    procs: list[Any] = []
    news = [trio.Event()]  # set (and replaced) whenever a child prints something

    async def read(i: int, stdout: Any) -> None:
        buf = b""
        async for data in stdout:
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                word = line.decode().split()
                if word and word[0] == "READY":
                    ready[i] = word[1]
                elif word and word[0] == "GOT":
                    got[word[1]][i] = int(word[2])
            news[0].set()
            news[0] = trio.Event()

    async def until(check: Any, timeout: float) -> None:
        with trio.fail_after(timeout):
            while not check():
                await news[0].wait()

    try:
        times = await _publish_and_time(n, messages, rng, procs, ready, got, read, until)
    finally:
        for proc in procs:  # children exit when their stdin closes
            with trio.CancelScope(shield=True):
                await proc.stdin.aclose()
                with trio.move_on_after(10):
                    await proc.wait()
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
                await proc.stdout.aclose()
    times.sort()
    return statistics.median(times), times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]


def _relay_case(tokens: int, rate: float, rounds: int) -> None:
    node_key, relay_key = (SecretKey.generate().even_y() for _ in range(2))
    with _peer("node", "--key", node_key.secret_bytes().hex(), "--tokens", str(tokens),
               "--rate", str(rate)) as node_addr, \
            _peer("relay", "--key", relay_key.secret_bytes().hex(), "--node-addr", node_addr,
                  "--node-key", node_key.secret_bytes().hex()) as relay_addr:
        direct, relayed = trio.run(_relay_ratio, node_addr, relay_addr, rounds)
    pace = f"engine paced at {rate:.0f} tok/s" if rate else "instant engine"
    print(f"  {pace:<28} direct {direct:>8,.0f} tok/s  relayed {relayed:>8,.0f} tok/s  "
          f"ratio {relayed / direct:.3f}")


def _frames_case(tokens: int, max_batch: int, rounds: int) -> tuple[float, float]:
    key = SecretKey.generate().even_y()
    with _peer("node", "--key", key.secret_bytes().hex(), "--tokens", str(tokens),
               "--max-batch", str(max_batch)) as addr:
        return trio.run(_frames, addr, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mesh benchmarks across processes")
    parser.add_argument("--quick", action="store_true", help="tiny run (a smoke test)")
    args = parser.parse_args(argv)
    logging.getLogger("libp2p").setLevel(logging.WARNING)
    rounds = 2 if args.quick else 7
    print("gossip propagation to every other peer process")
    for n in (3, 10) if args.quick else (3, 10, 30):
        p50, p95 = trio.run(_gossip, n, 5 if args.quick else 30)
        print(f"  {n:>3} processes: p50 {p50:6.1f} ms  p95 {p95:6.1f} ms")
    print("relayed ÷ direct job tokens/s, each peer its own process")
    _relay_case(100 if args.quick else 1000, 500.0, rounds)
    _relay_case(500 if args.quick else 5000, 0.0, rounds)
    tokens = 500 if args.quick else 5000
    batched = _frames_case(tokens, 64, rounds)
    single = _frames_case(tokens, 1, rounds)
    print("one connection, instant engine: batching (≤ 64 deltas per frame) vs one per frame")
    print(f"  batched   {batched[0]:>9,.0f} tok/s  {batched[1]:>8,.0f} frames/s")
    print(f"  unbatched {single[0]:>9,.0f} tok/s  {single[1]:>8,.0f} frames/s")
    print(f"  tokens/s ratio batched/unbatched {batched[0] / single[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
