"""The coordinator's job API with real processes: coordinator + node(s) on the embedded engine.

Raw HTTP (httpx) for the job API and its SSE format, receipts verified offline, rate-limit
headers, re-queue when the node serving a job is killed before its first token, and
durability: a coordinator killed with SIGKILL under load loses no accepted job.
"""

from __future__ import annotations

import base64
import json
import re
import signal
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from infernet.protocol.keys import PublicKey
from infernet.protocol.receipt import decode_countersigned_receipt, verify_countersigned_receipt
from tests.integration.conftest import (
    BIN,
    MODEL,
    Launcher,
    Network,
    Proc,
    start_coordinator,
    wait_until,
)

pytestmark = pytest.mark.slow

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def _auth(net: Network) -> dict[str, str]:
    return {"Authorization": f"Bearer {net.token}"}


def _sse(lines: Iterator[str]) -> list[Any]:
    out: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def _job(net: Network, job_id: str) -> dict[str, Any]:
    r = httpx.get(f"{net.api}/api/v1/jobs/{job_id}", headers=_auth(net), timeout=10)
    r.raise_for_status()
    body: dict[str, Any] = r.json()
    return body


def _ended(net: Network, job_id: str) -> dict[str, Any] | None:
    job = _job(net, job_id)
    return job if job["status"] in ("completed", "failed") else None


def test_job_api_end_to_end(network: Network) -> None:
    net, auth = network, _auth(network)

    # stream false: 202 pending at once, the job completes in the background
    r = httpx.post(f"{net.api}/api/v1/jobs", headers=auth, timeout=10,
                   json={"model": MODEL, "messages": QUESTION, "max_tokens": 24})
    assert r.status_code == 202, r.text
    assert r.json()["status"] == "pending"
    assert all(h in r.headers for h in ("X-RateLimit-Limit", "X-RateLimit-Remaining",
                                        "X-RateLimit-Reset"))
    job_id = r.json()["id"]
    job = wait_until(lambda: _ended(net, job_id), 60, "the job to end")
    assert job["status"] == "completed", job
    assert "Paris" in job["result"]["content"]
    usage = job["result"]["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert job["node_id"] and job["latency_ms"] > 0

    # its receipt: countersigned, and verifiable offline with the two public keys
    rid = job["infernet"]["receipt_id"]
    cpr = httpx.get(f"{net.api}/api/v1/cprs/{rid}", headers=auth, timeout=10).json()
    assert cpr["status"] == "countersigned" and cpr["node_pubkey"] == job["node_id"]
    coordinator_key = httpx.get(f"{net.api}/api/v1/bootstrap").json()["coordinator"]["pubkey"]
    verified = verify_countersigned_receipt(
        decode_countersigned_receipt(base64.b64decode(cpr["receipt"])),
        coordinator_keys=[PublicKey.from_hex(coordinator_key)])
    assert verified.receipt_id == rid and verified.receipt.job_id == job_id
    assert verified.receipt.output_tokens == usage["completion_tokens"]

    # attach to the finished job: the same text, then the summary and [DONE]
    with httpx.stream("GET", f"{net.api}/api/v1/jobs/{job_id}/stream", headers=auth,
                      timeout=30) as s:
        replay = _sse(s.iter_lines())
    assert "".join(e.get("text", "") for e in replay[:-1]) == job["result"]["content"]
    assert replay[-1] == "[DONE]"

    # stream true: the book's SSE format, straight from the submission
    with httpx.stream("POST", f"{net.api}/api/v1/jobs", headers=auth, timeout=60,
                      json={"model": MODEL, "messages": QUESTION, "stream": True,
                            "max_tokens": 24}) as s:
        assert s.status_code == 200
        assert s.headers["content-type"].startswith("text/event-stream")
        streamed = _sse(s.iter_lines())
    texts = [e["text"] for e in streamed if isinstance(e, dict) and "text" in e]
    assert "Paris" in "".join(texts) and len(texts) >= 1
    assert streamed[-2]["usage"]["completion_tokens"] > 0 and streamed[-1] == "[DONE]"

    listed = httpx.get(f"{net.api}/api/v1/jobs?limit=10", headers=auth).json()["jobs"]
    assert len(listed) == 2 and listed[1]["id"] == job_id

    models = httpx.get(f"{net.api}/api/v1/models", headers=auth).json()["models"]
    assert models[0]["id"] == MODEL and models[0]["nodes"] == 1
    assert models[0]["avg_tokens_per_second"] > 0

    status = httpx.get(f"{net.api}/api/v1/nodes/{job['node_id']}/status").json()
    assert status["status"] == "online"

    metrics = httpx.get(f"{net.api}/metrics").text
    assert f'infernet_jobs_total{{model="{MODEL}",outcome="completed"}} 2.0' in metrics


def _engine_url(node: Proc) -> str:
    found = wait_until(lambda: re.search(r"url=(http://127\.0\.0\.1:\d+)", node.log.read_text()),
                       120, f"{node.name}'s engine")
    return str(found[1])


def test_node_killed_before_its_first_token_the_job_completes_elsewhere(
    launcher: Launcher,
) -> None:
    net = start_coordinator(launcher)
    # Two nodes, one engine (two engines on two cores would starve each other): "spare" runs
    # the engine; "first" uses it too and announces more slots, so the router picks it first.
    spare = net.add_node("spare", INFERNET_ENGINE_SLOTS="1", INFERNET_CONTROL_PORT="0")
    engine = _engine_url(spare)
    first = net.add_node("first", INFERNET_BACKEND="embedded", INFERNET_BACKEND_URL=engine,
                         INFERNET_ENGINE_SLOTS="4", INFERNET_CONTROL_PORT="0")
    net.wait_for_model()
    wait_until(lambda: httpx.get(f"{net.api}/api/v1/models", headers=_auth(net)).json()[
        "models"][0]["nodes"] == 2, 60, "both nodes announced")

    # A long prompt keeps the engine evaluating it: time to kill "first" before any token.
    prompt = "Repeat after me. " + "The quick brown fox jumps over the lazy dog. " * 150
    r = httpx.post(f"{net.api}/api/v1/jobs", headers=_auth(net), timeout=10, json={
        "model": MODEL, "max_tokens": 8,
        "messages": [{"role": "user", "content": prompt + "What is the capital of France?"}]})
    job_id = r.json()["id"]
    wait_until(lambda: "accepted" in first.log.read_text(), 60, "the first node to accept")
    first.popen.send_signal(signal.SIGKILL)

    job = wait_until(lambda: _ended(net, job_id), 120, "the job to end")
    assert job["status"] == "completed", job
    assert job["result"]["usage"]["completion_tokens"] > 0
    spare_key = httpx.get(f"{net.api}/api/v1/nodes/{job['node_id']}/status").json()
    assert spare_key["status"] == "online"  # served by the survivor
    assert "lost before the first token" in net.coordinator.log.read_text()


def _restart(net: Network, launcher: Launcher) -> Proc:
    """Start the coordinator again on the same data directory and ports."""
    http_port = net.api.rsplit(":", 1)[1]
    p2p_port = re.search(r"/tcp/(\d+)/", net.bootstrap)
    assert p2p_port is not None
    home = launcher.root / "coordinator-home"
    proc = launcher.spawn("coordinator-2", [
        str(BIN / "infernet-coordinator"), "--data-dir", str(home / "coordinator"), "serve",
        "--http-port", http_port, "--p2p-host", "127.0.0.1", "--p2p-port", p2p_port[1]], home)

    def healthy() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"restarted coordinator exited\n{proc.tail()}")
        return httpx.get(f"{net.api}/health", timeout=2).status_code == 200

    wait_until(healthy, 30, "the restarted coordinator")
    return proc


def test_sigkill_under_load_loses_no_accepted_job(network: Network, launcher: Launcher) -> None:
    net, auth = network, _auth(network)
    accepted: list[str] = []
    with httpx.Client(timeout=10) as client:
        for i in range(12):
            r = client.post(f"{net.api}/api/v1/jobs", headers=auth, json={
                "model": MODEL, "max_tokens": 48,
                "messages": [{"role": "user", "content": f"Count to {i + 5}."}]})
            assert r.status_code == 202, r.text
            accepted.append(r.json()["id"])
        # Kill once some jobs finished and others are queued or running.
        wait_until(lambda: sum(j["status"] == "completed" for j in client.get(
            f"{net.api}/api/v1/jobs?limit=100", headers=auth).json()["jobs"]) >= 2,
            120, "two jobs to complete")
    net.coordinator.popen.send_signal(signal.SIGKILL)
    net.coordinator.popen.wait(10)

    restarted = _restart(net, launcher)

    def all_ended() -> list[dict[str, Any]] | None:
        jobs = [_job(net, job_id) for job_id in accepted]
        return jobs if all(j["status"] in ("completed", "failed") for j in jobs) else None

    jobs = wait_until(all_ended, 240, "every accepted job to end after the restart")
    for job in jobs:
        assert job["status"] == "completed" or job["error"], job  # failed jobs carry a code
    # Jobs that were queued or running when the coordinator died ran again after it came back.
    assert sum(j["status"] == "completed" for j in jobs) == len(accepted), [
        (j["id"], j["status"], j.get("error")) for j in jobs]
    assert "re-queued" in restarted.log.read_text()
