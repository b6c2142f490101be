"""Adapter overhead: streaming through the embedded `Backend` vs a plain httpx client.

Starts one real embedded engine (llama.cpp, 4 slots) and streams the same request through
(a) a plain httpx client posting the very body the adapter sends to ``/v1/completions`` and
parsing the SSE lines itself, and (b) `EmbeddedBackend.stream_chat`, the node's own path
(OpenAI adapter, SSE parser, question/answer template, answer trimming). The two alternate
(A B B A ...) so machine noise hits both alike. Prints, from this one run:

- tokens/s through the adapter ÷ tokens/s of the plain client, 1 and 4 concurrent streams
  (the engine's own completion_tokens over wall time; goal ≥ 0.98);
- TTFT added by the adapter: p50(adapter) − p50(plain), and the median of paired
  differences (goal ≤ 1 ms);
- the same comparison without the engine: one recorded SSE stream replayed through both
  parsers in-process (CPU time per token), which machine load cannot blur, and the tokens/s
  ratio that cost implies at the engine's measured speed.

    python -m bench.backend_overhead [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import trio

from infernet.backends.base import ChatMessage, ChatRequest, TextDelta, Usage
from infernet.backends.embedded import EMBEDDED_MODEL, EmbeddedBackend, open_embedded_engine
from infernet.backends.openai_compat import OpenAICompatBackend
from infernet.backends.qa_prompt import format_qa_prompt

THROUGHPUT_PROMPT = "List the numbers from one to fifty."
TTFT_PROMPT = "What is the capital of France?"

Run = Callable[[ChatRequest], Awaitable[tuple[float, float, int]]]  # (ttft, seconds, tokens)


def plain_body(request: ChatRequest) -> dict[str, Any]:
    """The body the adapter sends for ``request`` (built here independently)."""
    rendered = format_qa_prompt(request)
    body: dict[str, Any] = {
        "model": request.model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "prompt": rendered.prompt,
        "max_tokens": rendered.max_tokens,
        "temperature": rendered.temperature,
        "stop": list(rendered.stop),
    }
    if request.seed is not None:
        body["seed"] = request.seed
    return body


def plain_client(client: httpx.AsyncClient, base_url: str) -> Run:
    async def run(request: ChatRequest) -> tuple[float, float, int]:
        start = time.perf_counter()
        first: float | None = None
        tokens = 0
        async with client.stream("POST", base_url + "/v1/completions",
                                 json=plain_body(request),
                                 headers={"Connection": "close"}) as response:  # fmt: skip
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if first is None and any(c.get("text") for c in chunk.get("choices", [])):
                    first = time.perf_counter()
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
        end = time.perf_counter()
        return (first or end) - start, end - start, tokens

    return run


def through_adapter(backend: EmbeddedBackend) -> Run:
    async def run(request: ChatRequest) -> tuple[float, float, int]:
        start = time.perf_counter()
        first: float | None = None
        tokens = 0
        async for item in backend.stream_chat(request):
            if isinstance(item, TextDelta):
                if first is None:
                    first = time.perf_counter()
            elif isinstance(item, Usage):
                tokens = item.completion_tokens
        end = time.perf_counter()
        return (first or end) - start, end - start, tokens

    return run


async def throughput(run: Run, request: ChatRequest, streams: int) -> float:
    """Total completion tokens per second of ``streams`` concurrent streams."""
    counts: list[int] = []

    async def one() -> None:
        counts.append((await run(request))[2])

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(streams):
            nursery.start_soon(one)
    return sum(counts) / (time.perf_counter() - start)


async def compare_throughput(plain: Run, adapter: Run, streams: int, rounds: int,
                             max_tokens: int) -> tuple[float, float, float]:  # fmt: skip
    """Median tokens/s of each side over alternating rounds, and the median ratio."""
    request = ChatRequest(model=EMBEDDED_MODEL, max_tokens=max_tokens, seed=1,
                          messages=(ChatMessage(role="user", content=THROUGHPUT_PROMPT),))
    plain_rates: list[float] = []
    adapter_rates: list[float] = []
    for i in range(rounds):
        order = (plain, adapter) if i % 2 == 0 else (adapter, plain)
        for side in order:
            rate = await throughput(side, request, streams)
            (plain_rates if side is plain else adapter_rates).append(rate)
    ratios = [a / p for a, p in zip(adapter_rates, plain_rates, strict=True)]
    return statistics.median(plain_rates), statistics.median(adapter_rates), statistics.median(
        ratios
    )


async def compare_ttft(plain: Run, adapter: Run, samples: int) -> tuple[float, float, float]:
    """p50 TTFT of each side (ms) and the median paired difference (ms)."""
    request = ChatRequest(model=EMBEDDED_MODEL, max_tokens=2,
                          messages=(ChatMessage(role="user", content=TTFT_PROMPT),))
    plain_ttft: list[float] = []
    adapter_ttft: list[float] = []
    for i in range(samples):
        order = (plain, adapter) if i % 2 == 0 else (adapter, plain)
        for side in order:
            ttft = (await side(request))[0] * 1000
            (plain_ttft if side is plain else adapter_ttft).append(ttft)
    paired = [a - p for a, p in zip(adapter_ttft, plain_ttft, strict=True)]
    return statistics.median(plain_ttft), statistics.median(adapter_ttft), statistics.median(
        paired
    )


class _Replay:
    """An `EngineView` whose adapter reads a recorded stream from a MockTransport."""

    def __init__(self, adapter: OpenAICompatBackend) -> None:
        self.adapter = adapter


async def replay_cost(recorded: bytes, iterations: int) -> tuple[float, float, int]:
    """CPU seconds per token of the plain parser and of the adapter on ``recorded``."""
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=recorded)  # fmt: skip

    request = ChatRequest(model=EMBEDDED_MODEL, max_tokens=96, seed=1,
                          messages=(ChatMessage(role="user", content=THROUGHPUT_PROMPT),))
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        adapter = OpenAICompatBackend("http://replay", "embedded", client=client,
                                      prompt_formatter=format_qa_prompt)  # fmt: skip
        sides = {"plain": plain_client(client, "http://replay"),
                 "adapter": through_adapter(EmbeddedBackend(_Replay(adapter)))}  # fmt: skip
        tokens = (await sides["plain"](request))[2]
        cost: dict[str, float] = {}
        for name, run in sides.items():
            started = time.process_time()
            for _ in range(iterations):
                await run(request)
            cost[name] = (time.process_time() - started) / (iterations * max(tokens, 1))
    return cost["plain"], cost["adapter"], tokens


async def record_stream(client: httpx.AsyncClient, base_url: str, max_tokens: int) -> bytes:
    """The raw SSE bytes the engine sends for the throughput request."""
    request = ChatRequest(model=EMBEDDED_MODEL, max_tokens=max_tokens, seed=1,
                          messages=(ChatMessage(role="user", content=THROUGHPUT_PROMPT),))
    response = await client.post(base_url + "/v1/completions", json=plain_body(request),
                                 headers={"Connection": "close"})  # fmt: skip
    response.raise_for_status()
    return response.content


async def bench(args: argparse.Namespace) -> int:
    rounds, samples, max_tokens = (5, 15, 32) if args.quick else (9, 41, 96)
    timeout = httpx.Timeout(120, connect=5)
    with tempfile.TemporaryDirectory(prefix="infernet-bench-") as tmp:
        async with open_embedded_engine(
            Path(tmp), threads=args.threads, parallel=4, ctx=4096, model_cache=args.model_cache,
            supervise=False,
        ) as backend, httpx.AsyncClient(timeout=timeout) as client:
            adapter_http = backend.engine.adapter
            assert adapter_http is not None
            await backend.list_models()  # as the node does at start (fills the model check)
            plain = plain_client(client, adapter_http.base_url)
            adapter = through_adapter(backend)
            warm = ChatRequest(model=EMBEDDED_MODEL, max_tokens=8, seed=1, messages=(
                ChatMessage(role="user", content=THROUGHPUT_PROMPT),))  # fmt: skip
            for side in (plain, adapter):  # warm the prompt cache, all slots and the code
                await throughput(side, warm, 4)
            print(f"backend_overhead: embedded engine, 4 slots, {args.threads} threads; "
                  f"{rounds} alternating rounds of {max_tokens} tokens", flush=True)  # fmt: skip
            ok = True
            single_rate = 0.0
            for streams in (1, 4):
                p, a, ratio = await compare_throughput(plain, adapter, streams, rounds,
                                                       max_tokens)  # fmt: skip
                single_rate = single_rate or p
                ok &= ratio >= 0.98
                print(f"  {streams} stream{'s' if streams > 1 else ''}: plain {p:6.1f} tok/s, "
                      f"adapter {a:6.1f} tok/s, ratio {ratio:.3f} (goal >= 0.98)",
                      flush=True)  # fmt: skip
            p50_plain, p50_adapter, paired = await compare_ttft(plain, adapter, samples)
            added = p50_adapter - p50_plain
            ok &= added <= 1.0
            print(f"  TTFT p50: plain {p50_plain:.2f} ms, adapter {p50_adapter:.2f} ms, "
                  f"added {added:+.2f} ms (median paired {paired:+.2f} ms; goal <= 1 ms; "
                  f"{samples} pairs)", flush=True)  # fmt: skip
            recorded = await record_stream(client, adapter_http.base_url, max_tokens)
        plain_cpu, adapter_cpu, tokens = await replay_cost(recorded, 20 if args.quick else 100)
        extra = max(adapter_cpu - plain_cpu, 0.0)
        implied = 1 / (1 + extra * single_rate) if single_rate else float("nan")
        print(f"  replayed stream ({tokens} tokens, no engine): CPU per token plain "
              f"{plain_cpu * 1e6:.0f} us, adapter {adapter_cpu * 1e6:.0f} us; at "
              f"{single_rate:.1f} tok/s that caps the ratio at {implied:.4f}",
              flush=True)  # fmt: skip
        print(f"  {'all goals met' if ok else 'goal missed (see above)'}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.backend_overhead")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (about a minute)")
    parser.add_argument("--threads", type=int, default=2, help="engine threads")
    parser.add_argument("--model-cache", type=Path,
                        default=Path.home() / ".cache" / "infernet" / "models")  # fmt: skip
    return trio.run(bench, parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
