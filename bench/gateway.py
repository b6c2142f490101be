"""Gateway overhead: the same chat through coordinator + mesh + node vs straight to the engine.

Starts a real coordinator and a real node (embedded llama.cpp engine) as subprocesses, then
sends the same short prompt N times, one at a time, (a) straight to the node's engine with a
plain httpx client (its ``/v1/completions`` with the node's own question/answer prompt) and
(b) through the coordinator's ``/v1/chat/completions``, interleaved so machine noise hits
both alike. Prints p50/p99 time to first token and total latency for each, the added
milliseconds and the ratio.

    python -m bench.gateway [--n 30] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._procs import free_port, poll
from infernet.backends.base import ChatMessage, ChatRequest
from infernet.backends.qa_prompt import format_qa_prompt

BIN = Path(sys.executable).parent
QUESTION = "What is the capital of France?"


def _timed_stream(client: httpx.Client, url: str, body: dict[str, object],
                  headers: dict[str, str]) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    with client.stream("POST", url, json=body, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                text = choice.get("text") or choice.get("delta", {}).get("content")
                if text and first is None:
                    first = time.perf_counter()
    end = time.perf_counter()
    return ((first or end) - start) * 1000, (end - start) * 1000


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=30)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="n=5, for smoke tests")
    args = ap.parse_args(argv)
    n = 5 if args.quick else args.n
    root = Path(tempfile.mkdtemp(prefix="infernet-bench-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "INFERNET_MDNS": "false"}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        chome = root / "c"
        data = chome / "coordinator"
        env_c = {**env, "INFERNET_HOME": str(chome)}
        token = subprocess.run([str(BIN / "infernet-coordinator"), "--data-dir", str(data),
                                "token", "create", "--name", "bench"], env=env_c, check=True,
                               capture_output=True, text=True).stdout.strip()
        http_port, p2p_port = free_port(), free_port()
        with (root / "coordinator.log").open("wb") as log:
            procs.append(subprocess.Popen(
                [str(BIN / "infernet-coordinator"), "--data-dir", str(data), "serve",
                 "--http-port", str(http_port), "--p2p-host", "127.0.0.1",
                 "--p2p-port", str(p2p_port)], env=env_c, stdout=log, stderr=log))
        api = f"http://127.0.0.1:{http_port}"
        health = poll(lambda: httpx.get(f"{api}/health").json(), 30, "coordinator")
        assert isinstance(health, dict)
        nhome = root / "n"
        env_n = {**env, "INFERNET_HOME": str(nhome)}
        subprocess.run([str(BIN / "infernet"), "init"], env=env_n, check=True,
                       capture_output=True)
        node_log = root / "node.log"
        with node_log.open("wb") as log:
            procs.append(subprocess.Popen(
                [str(BIN / "infernet"), "start", "--host", "127.0.0.1", "--port", "0",
                 "--bootstrap", f"/ip4/127.0.0.1/tcp/{p2p_port}/p2p/{health['peer_id']}"],
                env=env_n, stdout=log, stderr=log))
        auth = {"Authorization": f"Bearer {token}"}

        def model_ready() -> bool:
            data = httpx.get(f"{api}/v1/models", headers=auth).json().get("data", [])
            return bool(data)

        poll(model_ready, 120, "the node's model")
        engine = re.search(r"url=(http://127\.0\.0\.1:\d+)", node_log.read_text())
        assert engine, "engine url not in node log"
        prompt = format_qa_prompt(ChatRequest(model="gemma3-270m", messages=(
            ChatMessage(role="user", content=QUESTION),), max_tokens=args.max_tokens))
        direct_body = {"prompt": prompt.prompt, "stop": list(prompt.stop), "stream": True,
                       "max_tokens": args.max_tokens, "temperature": 0}
        mesh_body = {"model": "gemma3-270m", "stream": True, "max_tokens": args.max_tokens,
                     "messages": [{"role": "user", "content": QUESTION}]}
        results: dict[str, tuple[list[float], list[float]]] = {"direct": ([], []),
                                                                 "mesh": ([], [])}
        with httpx.Client(timeout=60, headers={"Connection": "close"}) as client:
            paths = (("direct", f"{engine[1]}/v1/completions", direct_body, {}),
                     ("mesh", f"{api}/v1/chat/completions", mesh_body, auth))
            for i in range(n + 2):  # two warm-up rounds
                # Alternate which path goes first: measured on the embedded engine, the
                # second of two back-to-back requests is ~10 ms slower whichever it is.
                for name, url, body, hdrs in paths if i % 2 else paths[::-1]:
                    ttft, total = _timed_stream(client, url, body, hdrs)
                    if i >= 2:
                        results[name][0].append(ttft)
                        results[name][1].append(total)
        print(f"gateway overhead, {n} sequential requests each, max_tokens={args.max_tokens}")
        print(f"{'path':<8}{'ttft p50':>10}{'ttft p99':>10}{'total p50':>11}{'total p99':>11}")
        for name, (ttft, total) in results.items():
            print(f"{name:<8}{_pct(ttft, .5):>9.1f}ms{_pct(ttft, .99):>9.1f}ms"
                  f"{_pct(total, .5):>10.1f}ms{_pct(total, .99):>10.1f}ms")
        d_ttft, m_ttft = (statistics.median(results[k][0]) for k in ("direct", "mesh"))
        d_tot, m_tot = (statistics.median(results[k][1]) for k in ("direct", "mesh"))
        print(f"added by coordinator+mesh+node: ttft +{m_ttft - d_ttft:.1f} ms "
              f"(ratio {m_ttft / d_ttft:.2f}), total +{m_tot - d_tot:.1f} ms "
              f"(ratio {m_tot / d_tot:.2f})")
    finally:
        for p in reversed(procs):
            p.send_signal(2)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
