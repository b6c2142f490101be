"""Gateway overhead against an instant engine: coordinator + mesh + node vs direct vs LiteLLM.

Starts the instant engine (`bench.gateway_engine`), a real coordinator and a real node (as
subprocesses, the node using the instant engine as its ``llamacpp`` upstream) and, when
``--litellm`` names a ``litellm`` executable, LiteLLM's proxy on the same upstream. Then,
with one load generator (trio + h11, keep-alive, one connection per client), for 1, 16 and
64 concurrent clients it streams the same chat through each path and reports time to first
token and total latency (p50/p99) and the ratio to going straight to the engine; finally
jobs/s for short non-streamed jobs at 16 and 64 clients (saturation) with p50/p99 latency
and each process's CPU per job.

Everything shares this machine's cores, so absolute numbers move with its load; the
paths are measured in the same run, one after the other per level, so ratios hold.

    python -m bench.gateway_instant [--seconds 5] [--litellm /path/to/litellm] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import h11
import httpx
import trio

from bench._procs import cpu_seconds, free_port, poll

BIN = Path(sys.executable).parent
_CONTENT = re.compile(rb'"content":"[^"]')
_LEVELS = (1, 16, 64)


@dataclass
class Path_:
    """One way to reach the engine: base URL, model name, headers."""

    name: str
    url: str
    model: str
    headers: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)  # the processes this path adds


@dataclass
class Sample:
    ttft: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    errors: int = 0


class _Client:
    """One keep-alive HTTP/1.1 connection (h11) that posts and times a response."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.stream: trio.SocketStream | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def post(self, target: str, body: bytes, headers: dict[str, str]
                   ) -> tuple[int, float | None, float]:
        if self.stream is None or self.conn.our_state is not h11.IDLE:
            self.stream = await trio.open_tcp_stream(self.host, self.port)
            self.conn = h11.Connection(h11.CLIENT)
        hdrs = [("host", f"{self.host}:{self.port}"), ("content-type", "application/json"),
                ("content-length", str(len(body))), *headers.items()]
        start = time.perf_counter()
        await self.stream.send_all(
            self.conn.send(h11.Request(method="POST", target=target, headers=hdrs))
            + self.conn.send(h11.Data(data=body)) + self.conn.send(h11.EndOfMessage()))
        status, first = 0, None
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                data = await self.stream.receive_some(65536)
                if not data:
                    raise OSError("server closed the connection")
                self.conn.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
            elif isinstance(event, h11.Data):
                if first is None and _CONTENT.search(event.data):
                    first = time.perf_counter()
            elif isinstance(event, h11.EndOfMessage):
                end = time.perf_counter()
                break
            elif isinstance(event, h11.ConnectionClosed):
                raise OSError("connection closed mid-response")
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        else:
            await self.stream.aclose()
            self.stream = None
        return status, (first - start) if first else None, end - start


async def _load(path: Path_, clients: int, seconds: float, *, stream: bool,
                max_tokens: int) -> tuple[Sample, float]:
    """Run ``clients`` closed-loop clients for ``seconds``; return samples and jobs/s."""
    host, port = re.match(r"http://([^:/]+):(\d+)", path.url).groups()  # type: ignore[union-attr]
    body = json.dumps({"model": path.model, "stream": stream, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": "Say hi."}]}).encode()
    target = path.url.split(port, 1)[1] + "/chat/completions"
    sample, done = Sample(), 0
    stop_at = time.perf_counter() + seconds

    async def one_client() -> None:
        nonlocal done
        client = _Client(host, int(port))
        while time.perf_counter() < stop_at:
            try:
                status, ttft, total = await client.post(target, body, path.headers)
            except OSError:
                sample.errors += 1
                client.stream = None
                continue
            if status != 200:
                sample.errors += 1
                continue
            done += 1
            sample.total.append(total * 1000)
            if ttft is not None:
                sample.ttft.append(ttft * 1000)
        if client.stream is not None:
            await client.stream.aclose()

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(one_client)
    return sample, done / (time.perf_counter() - began)


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


@dataclass
class _Procs:
    root: Path
    env: dict[str, str]
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    by_name: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, args: list[str], **env: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.root / f"{name}.log"
        with log.open("wb") as out:
            p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                 env={**self.env, **env})
        self.procs.append(p)
        self.by_name[name] = p
        return p, log

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()


def _start(procs: _Procs, litellm: str | None, tokens: int) -> list[Path_]:
    engine_port = free_port()
    procs.spawn("engine", [sys.executable, "-m", "bench.gateway_engine", "--port",
                           str(engine_port), "--tokens", str(tokens)])
    engine = f"http://127.0.0.1:{engine_port}"
    poll(lambda: httpx.get(f"{engine}/health").status_code == 200, 30, "the instant engine")

    chome = procs.root / "c"
    data = chome / "coordinator"
    env_c = {"INFERNET_HOME": str(chome)}
    token = subprocess.run([str(BIN / "infernet-coordinator"), "--data-dir", str(data), "token",
                            "create", "--name", "bench"], env={**procs.env, **env_c},
                           check=True, capture_output=True, text=True).stdout.strip()
    http_port, p2p_port = free_port(), free_port()
    procs.spawn("coordinator", [
        str(BIN / "infernet-coordinator"), "--data-dir", str(data), "serve", "--http-port",
        str(http_port), "--p2p-host", "127.0.0.1", "--p2p-port", str(p2p_port),
        "--rpm", "100000000", "--rph", "100000000"], **env_c)
    api = f"http://127.0.0.1:{http_port}"
    health = poll(lambda: httpx.get(f"{api}/health").json(), 30, "the coordinator")
    assert isinstance(health, dict)
    nhome = procs.root / "n"
    env_n = {"INFERNET_HOME": str(nhome), "INFERNET_BACKEND": "llamacpp",
             "INFERNET_BACKEND_URL": engine, "INFERNET_ENGINE_SLOTS": "256",
             "INFERNET_CONTROL_PORT": "0"}
    subprocess.run([str(BIN / "infernet"), "init"], env={**procs.env, **env_n}, check=True,
                   capture_output=True)
    procs.spawn("node", [str(BIN / "infernet"), "start", "--host", "127.0.0.1", "--port", "0",
                         "--bootstrap",
                         f"/ip4/127.0.0.1/tcp/{p2p_port}/p2p/{health['peer_id']}"], **env_n)
    auth = {"Authorization": f"Bearer {token}"}
    poll(lambda: httpx.get(f"{api}/v1/models", headers=auth).json().get("data"), 60,
          "the node's model at the coordinator")
    pids = {name: p.pid for name, p in procs.by_name.items()}
    paths = [Path_("direct", f"{engine}/v1", "instant"),
             Path_("infernet", f"{api}/v1", "instant", auth,
                   {"coordinator": pids["coordinator"], "node": pids["node"]})]
    if litellm:
        lport = free_port()
        master = "sk-" + secrets.token_hex(32)  # LiteLLM refuses to start without one
        litellm_proc, _ = procs.spawn(
            "litellm", [litellm, "--model", "openai/instant", "--api_base", f"{engine}/v1",
                        "--port", str(lport), "--num_workers", "1"],
            OPENAI_API_KEY="sk-upstream", LITELLM_MASTER_KEY=master,
            LITELLM_LOG="ERROR")
        lurl = f"http://127.0.0.1:{lport}"
        poll(lambda: httpx.get(f"{lurl}/health/liveliness").status_code == 200, 120,
              "LiteLLM's proxy")
        paths.append(Path_("litellm", f"{lurl}/v1", "instant",
                           {"Authorization": f"Bearer {master}"}, {"proxy": litellm_proc.pid}))
    return paths


async def _run(paths: list[Path_], seconds: float, levels: tuple[int, ...],
               max_tokens: int) -> None:
    for path in paths:  # warm-up: connections, caches, lazy imports on every path
        await _load(path, 4, min(1.0, seconds), stream=True, max_tokens=max_tokens)
    print(f"\nstreamed chat, {max_tokens} tokens, closed loop, {seconds:.0f} s per cell")
    print(f"{'clients':>7} {'path':<9}{'ttft p50':>10}{'ttft p99':>10}{'total p50':>11}"
          f"{'total p99':>11}{'req/s':>9}{'ttft×':>7}{'err':>5}")
    for clients in levels:
        base: float | None = None
        for path in paths:
            sample, rate = await _load(path, clients, seconds, stream=True,
                                       max_tokens=max_tokens)
            p50 = _pct(sample.ttft, .5)
            base = base or p50
            print(f"{clients:>7} {path.name:<9}{p50:>9.2f}ms{_pct(sample.ttft, .99):>8.2f}ms"
                  f"{_pct(sample.total, .5):>9.2f}ms{_pct(sample.total, .99):>9.2f}ms"
                  f"{rate:>9.0f}{p50 / base:>7.2f}{sample.errors:>5}")
    # Short jobs at the two highest levels: the highest saturates; the one below shows the
    # latency a lighter load gets (p99 under load is mostly queueing: Little's law).
    counts = levels[-2:]
    print(f"\nsaturation: short jobs (non-streamed, 4 tokens) at {' and '.join(map(str, counts))}"
          f" clients, {seconds:.0f} s each")
    print("(CPU ms/job: what each process the path adds spent per job, all its threads; "
          "jobs/CPU-s: what one core would serve if that process had it to itself)")
    print(f"{'clients':>7} {'path':<9}{'jobs/s':>9}{'p50':>10}{'p99':>10}{'err':>5}"
          "  CPU ms/job (jobs/CPU-s)")
    for clients in counts:
        for path in paths:
            before = {name: cpu_seconds(pid) for name, pid in path.pids.items()}
            began = time.perf_counter()
            sample, rate = await _load(path, clients, seconds, stream=False, max_tokens=4)
            jobs = rate * (time.perf_counter() - began)
            cost = "  ".join(
                f"{name} {ms:.2f} ({1000 / ms:.0f})"
                for name, pid in path.pids.items()
                if (ms := (cpu_seconds(pid) - before[name]) * 1000 / max(jobs, 1)) > 0)
            print(f"{clients:>7} {path.name:<9}{rate:>9.0f}{_pct(sample.total, .5):>8.1f}ms"
                  f"{_pct(sample.total, .99):>8.1f}ms{sample.errors:>5}  {cost}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="per measurement cell")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--litellm", default=os.environ.get("INFERNET_BENCH_LITELLM"),
                    help="a `litellm` executable (pip install 'litellm[proxy]') to compare")
    ap.add_argument("--quick", action="store_true", help="1 s cells, 1 and 16 clients")
    args = ap.parse_args(argv)
    seconds = 1.0 if args.quick else args.seconds
    levels = (1, 16) if args.quick else _LEVELS
    procs = _Procs(Path(tempfile.mkdtemp(prefix="infernet-bench-")),
                   {**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        paths = _start(procs, args.litellm, args.max_tokens)
        trio.run(_run, paths, seconds, levels, args.max_tokens)
    finally:
        procs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
