"""An operator's day, as they type it: init → start --detach → status → chat → logs → stop.

One node (one embedded engine) at a time; the coordinator runs no engine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from infernet.node.runfiles import read_pid
from tests.integration.conftest import (
    BIN,
    MODEL,
    Launcher,
    free_port,
    start_coordinator,
    wait_until,
)

pytestmark = pytest.mark.slow

QUESTION = "What is the capital of France?"


class Operator:
    """Runs ``infernet`` commands against one node home, as a shell user would."""

    def __init__(self, launcher: Launcher, name: str) -> None:
        self.home = launcher.root / name
        self.env = {k: v for k, v in launcher.env.items()
                    if not k.startswith("INFERNET_") or k == "INFERNET_MODEL_CACHE"}
        self.env.update(INFERNET_HOME=str(self.home), INFERNET_CONTROL_PORT="0")

    def __call__(self, *args: str, timeout: float = 120,
                 **env: str) -> subprocess.CompletedProcess[str]:
        out = subprocess.run([str(BIN / "infernet"), *args], env={**self.env, **env},
                             capture_output=True, text=True, timeout=timeout, check=False)
        assert "Traceback" not in out.stderr, out.stderr
        return out

    def ok(self, *args: str, **env: str) -> str:
        out = self(*args, **env)
        assert out.returncode == 0, (args, out.stdout, out.stderr)
        return out.stdout

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.ok("status", "--json")))

    def pid(self) -> int | None:
        return read_pid(self.home)


@pytest.fixture
def operator(launcher: Launcher) -> Iterator[Operator]:
    op = Operator(launcher, "node")
    yield op
    if read_pid(op.home) is not None:  # a test that failed half-way: leave no engine behind
        op("stop", "--timeout", "30")
        pid = read_pid(op.home)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)


def test_init_start_status_chat_logs_stop(launcher: Launcher, operator: Operator) -> None:
    net = start_coordinator(launcher)
    op = operator
    assert "Node id: npub1" in op.ok("init")
    for key, value in (("listen_host", "127.0.0.1"), ("port", str(free_port())),
                       ("bootstrap", net.bootstrap), ("coordinator_url", net.api)):
        op.ok("config", "set", key, value)

    started = json.loads(op.ok("start", "--detach", "--json"))
    log_file = Path(started["log_file"])
    assert log_file == op.home / "logs" / "daemon.log"
    doc = op.status()
    assert doc["pid"] == started["pid"] == op.pid()
    assert doc["state"] == "serving" and doc["online"] is True
    assert MODEL in doc["models"] and doc["backend"]["healthy"] is True
    assert len(doc["node_id"]) == 64 and doc["npub"].startswith("npub1")
    assert doc["npub"] == op.ok("keys", "export", "node").strip()
    assert doc["node_id"] == op.ok("keys", "export", "node", "--format", "hex").strip()

    again = op("start", "--detach")
    assert again.returncode == 1 and "already running" in again.stderr

    addr = next(a for a in doc["listen_addrs"] if "/127.0.0.1/" in a)
    direct = json.loads(op.ok("chat", "--peer", addr, "--json", QUESTION))
    assert "Paris" in direct["text"] and direct["node"] == doc["node_id"]

    net.wait_for_model()
    via = op.ok("chat", "--coordinator", net.api, QUESTION, INFERNET_TOKEN=net.token)
    assert "Paris" in via

    doc = op.status()
    assert doc["jobs"]["completed"] == 2 and doc["jobs"]["running"] == 0
    assert doc["tokens"]["completion"] > 0
    assert doc["peers"]["connected"] >= 1  # the coordinator
    assert doc["last_announcement_at"] is not None
    human = op.ok("status")
    assert "online" in human and MODEL in human and "2 completed" in human

    metrics = httpx.get(f"http://127.0.0.1:{doc['control_port']}/metrics", timeout=10).text
    assert 'infernet_jobs_total{outcome="completed"} 2.0' in metrics
    assert "infernet_engine_up 1.0" in metrics

    logs = op.ok("logs", "--lines", "200")
    assert "control API on http://127.0.0.1:" in logs and " done: " in logs
    assert all(line.startswith("[20") for line in logs.splitlines() if line.strip())

    checks = {c["name"]: c for c in json.loads(op.ok("doctor", "--json"))["checks"]}
    for name in ("Node", "Backend", "P2P port", "Control port", "Coordinator", "Clock"):
        assert checks[name]["status"] == "ok", checks[name]

    pid = doc["pid"]
    assert op.ok("stop").strip() == f"Stopped the node (pid {pid})."
    down = op("status", "--json")
    assert down.returncode == 1 and json.loads(down.stdout)["state"] == "stopped"
    assert not (op.home / "run" / "node.pid").exists()
    assert not (op.home / "run" / "control.json").exists()
    assert "drained" in log_file.read_text()
    assert op.ok("stop").strip() == "The node is not running."


def start_foreground(launcher: Launcher, op: Operator) -> tuple[subprocess.Popen[bytes], str]:
    op.ok("init")
    proc = launcher.spawn("node", [str(BIN / "infernet"), "start", "--host", "127.0.0.1",
                                   "--port", str(free_port())], op.home,
                          INFERNET_CONTROL_PORT="0").popen

    def serving() -> dict[str, Any] | None:
        assert proc.poll() is None, "the node exited during start"
        out = op("status", "--json")
        return json.loads(out.stdout) if out.returncode == 0 else None

    doc = wait_until(serving, 180, "the node to serve")
    return proc, next(a for a in doc["listen_addrs"] if "/127.0.0.1/" in a)


def long_chat(op: Operator, addr: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "infernet"), "chat", "--peer", addr, "--json", "--max-tokens", "40",
         "Tell me a long story about a dragon."],
        env=op.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigterm_drains_the_job_in_flight(launcher: Launcher, operator: Operator) -> None:
    op = operator
    node, addr = start_foreground(launcher, op)
    chat = long_chat(op, addr)
    try:
        wait_until(lambda: op.status()["jobs"]["running"] == 1, 60, "the job to start")
        node.send_signal(signal.SIGTERM)
        wait_until(lambda: op.status()["state"] == "draining", 20, "the node to drain")
        refused = op("chat", "--peer", addr, QUESTION)
        assert refused.returncode == 1 and "no_capacity" in refused.stderr
        out, err = chat.communicate(timeout=120)
        assert chat.returncode == 0, err
        result = json.loads(out)
        assert result["completion_tokens"] > 0 and result["finish_reason"] in ("length", "stop")
        assert node.wait(60) == 0
    finally:
        if chat.poll() is None:
            chat.kill()
            chat.communicate()
    log = (op.home / "logs" / "daemon.log").read_text()
    assert "received SIGTERM: draining" in log and "drained" in log
    assert "Traceback" not in log


def test_second_signal_exits_at_once(launcher: Launcher, operator: Operator) -> None:
    op = operator
    node, addr = start_foreground(launcher, op)
    chat = long_chat(op, addr)
    try:
        wait_until(lambda: op.status()["jobs"]["running"] == 1, 60, "the job to start")
        node.send_signal(signal.SIGINT)
        wait_until(lambda: op.status()["state"] == "draining", 20, "the node to drain")
        node.send_signal(signal.SIGINT)
        assert node.wait(10) == 130
    finally:
        chat.kill()
        chat.communicate()
    log = (op.home / "logs" / "daemon.log").read_text()
    assert "second signal: exiting now" in log and "Traceback" not in log
