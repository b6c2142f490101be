"""Real processes on loopback: a coordinator and nodes started as the CLI starts them.

Helpers here start ``infernet-coordinator serve`` and ``infernet start`` as subprocesses
with a temporary ``INFERNET_HOME``, wait for readiness by polling HTTP with a deadline,
and on teardown stop them and show their logs when a test failed.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

BIN = Path(sys.executable).parent
MODEL = "gemma3-270m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
            if result:
                return result
        except (httpx.HTTPError, OSError) as exc:  # not up yet: remember why, poll again
            last_exc = exc
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last_exc})")


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, n: int = 40) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return f"--- {self.name} ({self.log}) ---\n" + "\n".join(lines[-n:])

    def stop(self, sig: int = signal.SIGINT, timeout: float = 15) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return int(self.popen.returncode)


@dataclass
class Launcher:
    """Starts project processes under one temporary directory and cleans them up."""

    root: Path
    env: dict[str, str]
    procs: list[Proc] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], home: Path, **extra_env: str) -> Proc:
        log = self.root / f"{name}.log"
        env = {**self.env, "INFERNET_HOME": str(home), **extra_env}
        with log.open("wb") as out:  # the child keeps its own copy of the descriptor
            popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.root)
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def run(self, args: list[str], home: Path) -> str:
        env = {**self.env, "INFERNET_HOME": str(home)}
        out = subprocess.run(args, env=env, capture_output=True, check=True, timeout=60)
        return out.stdout.decode()


@dataclass
class Network:
    """A running coordinator (+ nodes) reachable over HTTP."""

    launcher: Launcher
    api: str
    token: str
    bootstrap: str
    coordinator: Proc
    nodes: list[Proc] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"{self.api}/v1"

    def models(self) -> list[str]:
        r = httpx.get(f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return [m["id"] for m in r.json()["data"]]

    def models_full(self) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.base_url}/models", headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return list(r.json()["data"])

    def add_node(self, name: str = "node", **extra_env: str) -> Proc:
        home = self.launcher.root / name
        self.launcher.run([str(BIN / "infernet"), "init"], home)
        port = free_port()
        proc = self.launcher.spawn(name, [
            str(BIN / "infernet"), "start", "--host", "127.0.0.1", "--port", str(port),
            "--bootstrap", self.bootstrap], home, **extra_env)
        self.nodes.append(proc)
        return proc

    def wait_for_model(self, model: str = MODEL, timeout: float = 120) -> None:
        def ready() -> bool:
            for proc in self.launcher.procs:
                if proc.popen.poll() is not None:
                    raise AssertionError(f"{proc.name} exited early\n{proc.tail()}")
            return model in self.models()

        wait_until(ready, timeout, f"model {model} to be announced")


@pytest.fixture
def launcher(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Launcher]:
    env = dict(os.environ)
    env.setdefault("INFERNET_MODEL_CACHE", str(Path.home() / ".cache" / "infernet" / "models"))
    env["PYTHONUNBUFFERED"] = "1"
    # Any free control port: tests (and other suites on this machine) never share 46339.
    env.setdefault("INFERNET_CONTROL_PORT", "0")
    env["INFERNET_MDNS"] = "false"  # mDNS only inside a private netns (tests/mesh/test_mdns.py)
    launcher = Launcher(tmp_path, env)
    yield launcher
    codes = {p.name: p.stop() for p in reversed(launcher.procs)}
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for proc in launcher.procs:
            print(proc.tail(), file=sys.stderr)
    del codes


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


def start_coordinator(launcher: Launcher) -> Network:
    home = launcher.root / "coordinator-home"
    data = home / "coordinator"
    token = launcher.run([str(BIN / "infernet-coordinator"), "--data-dir", str(data), "token",
                          "create", "--name", "tests"], home).strip()
    http_port, p2p_port = free_port(), free_port()
    proc = launcher.spawn("coordinator", [
        str(BIN / "infernet-coordinator"), "--data-dir", str(data), "serve",
        "--http-port", str(http_port), "--p2p-host", "127.0.0.1", "--p2p-port", str(p2p_port)],
        home)
    api = f"http://127.0.0.1:{http_port}"

    def health() -> dict[str, Any] | None:
        if proc.popen.poll() is not None:
            raise AssertionError(f"coordinator exited early\n{proc.tail()}")
        r = httpx.get(f"{api}/health", timeout=2)
        return r.json() if r.status_code == 200 else None

    info = wait_until(health, 30, "coordinator /health")
    bootstrap = f"/ip4/127.0.0.1/tcp/{p2p_port}/p2p/{info['peer_id']}"
    return Network(launcher, api, token, bootstrap, proc)


@pytest.fixture
def network(launcher: Launcher) -> Iterator[Network]:
    """A coordinator and one node on the embedded engine, its model announced."""
    net = start_coordinator(launcher)
    net.add_node()
    net.wait_for_model()
    yield net
