"""``infernet up``: a whole local network in one process, for a first run and for demos.

Owns: starting a coordinator and one node (embedded engine unless configured otherwise)
on loopback, minting (or reusing) an API token, printing the OpenAI base URL and the
token as ``OPENAI_BASE_URL=...`` / ``OPENAI_API_KEY=...`` lines (so the OpenAI SDKs pick
them up once exported), sending one demo chat through the real path, then serving until
Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Final

import httpx
import msgspec
import trio
from httpx_sse import aconnect_sse
from trio_typing import TaskStatus

from coordinator.service import CoordinatorConfig, open_store, run_coordinator
from infernet.cli.heap import settle_heap
from infernet.node.config import init_home, load_config
from infernet.node.daemon import NodeInfo, run_node
from infernet.node.identity import ensure_identity
from infernet.protocol.errors import InfernetError

__all__ = ["run_up"]

TOKEN_FILE: Final = "up.token"
READY_TIMEOUT: Final = 120.0


def _say(line: str = "") -> None:
    print(line, flush=True)


def _token(data_dir: Path) -> str:
    """Reuse the token a previous ``infernet up`` minted, or mint one (file 0600)."""
    store = open_store(data_dir)
    try:
        path = data_dir / TOKEN_FILE
        if path.exists():
            token = path.read_text().strip()
            if store.check_token(token) is not None:
                return token
        token, _ = store.create_token("infernet-up")
    finally:
        store.close()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


async def _wait_for_model(client: httpx.AsyncClient, base: str, token: str) -> str:
    """Poll ``/v1/models`` until the node's announcement reached the coordinator."""
    with trio.fail_after(READY_TIMEOUT):
        while True:
            r = await client.get(f"{base}/models", headers={"Authorization": f"Bearer {token}"})
            models = [m["id"] for m in r.json().get("data", [])] if r.status_code == 200 else []
            if models:
                return str(models[0])
            await trio.sleep(0.1)


async def _demo_chat(client: httpx.AsyncClient, base: str, token: str, model: str,
                     prompt: str) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": True,
            "stream_options": {"include_usage": True}, "max_tokens": 64}
    _say(f"demo> {prompt}")
    start = time.perf_counter()
    first: float | None = None
    usage: dict[str, int] = {}
    async with aconnect_sse(client, "POST", f"{base}/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {token}"}) as events:
        if events.response.status_code != 200:
            await events.response.aread()
            _say(f"demo chat failed: {events.response.status_code} {events.response.text}")
            return
        async for sse in events.aiter_sse():
            if sse.data == "[DONE]":
                break
            chunk = json.loads(sse.data)
            if "error" in chunk:
                _say(f"\ndemo chat failed: {chunk['error']}")
                return
            for choice in chunk.get("choices", []):
                text = choice.get("delta", {}).get("content") or ""
                if text:
                    first = first or time.perf_counter()
                    sys.stdout.write(text)
                    sys.stdout.flush()
            usage = chunk.get("usage") or usage
    end = time.perf_counter()
    n = usage.get("completion_tokens", 0)
    decode = end - (first or end)
    rate = f"{n / decode:.1f} tok/s" if decode > 0 else "n/a"
    ttft = f"{((first or end) - start) * 1000:.0f} ms"
    _say(f"\n({usage.get('prompt_tokens', 0)} prompt + {n} completion tokens; {rate}; "
         f"first token after {ttft})")


async def run_up(home: Path, args: argparse.Namespace, scope: trio.CancelScope) -> None:
    """Run coordinator + node + demo until ``scope`` is cancelled (Ctrl-C)."""
    started = time.perf_counter()
    key, _ = init_home(home)
    # Delegate the node from a user key as `infernet init` does, so the node obeys its owner.
    ensure_identity(home, key, int(time.time()))
    config = load_config(home)
    data_dir = home / "coordinator"
    token = _token(data_dir)
    async with trio.open_nursery() as nursery:
        cinfo = await nursery.start(run_coordinator, CoordinatorConfig(
            data_dir=data_dir, http_port=args.api_port, p2p_host="127.0.0.1", p2p_port=0))
        node_config = msgspec.structs.replace(
            config, listen_host="127.0.0.1", port=args.p2p_port, mdns=False,
            bootstrap=(cinfo.bootstrap_addrs[0],))

        async def node(*, task_status: TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED) -> None:
            await run_node(home, node_config, key, task_status=task_status)
            scope.cancel()  # stopped with `infernet stop`: the local network goes down with it

        await nursery.start(node)
        base = f"{cinfo.api_url}/v1"
        async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=120.0)) as client:
            try:
                model = await _wait_for_model(client, base, token)
            except trio.TooSlowError:
                raise InfernetError("the node did not reach the coordinator in time",
                                    code="timeout") from None
            settle_heap()
            _say()
            _say(f"Infernet is up in {time.perf_counter() - started:.1f} s: "
                 f"coordinator + 1 node serving {model}.")
            _say(f"Logs: {home / 'logs' / 'up.log'}")
            _say("Point any OpenAI SDK at it (export these two lines):")
            _say(f"OPENAI_BASE_URL={base}")
            _say(f"OPENAI_API_KEY={token}")
            _say()
            if not args.no_demo:
                await _demo_chat(client, base, token, model, args.prompt)
        _say("Serving until Ctrl-C.")
