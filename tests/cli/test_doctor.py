"""``infernet doctor`` on a healthy and on a broken setup (no node running: no engine)."""

from __future__ import annotations

import email.utils
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from infernet.node.config import init_home
from tests.cli.conftest import Cli


@contextmanager
def fake_coordinator(skew_s: float = 0.0) -> Iterator[str]:
    """A /health endpoint whose clock is ``skew_s`` seconds off ours."""

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"status": "ok"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def date_time_string(self, timestamp: float | None = None) -> str:
            return email.utils.formatdate(time.time() + skew_s, usegmt=True)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def doctor(cli: Cli) -> tuple[int, dict[str, dict[str, str]]]:
    out = cli("doctor", "--json")
    assert "Traceback" not in out.stderr
    doc = json.loads(out.stdout)
    return out.returncode, {c["name"]: c for c in doc["checks"]}


def setup(cli: Cli, coordinator: str) -> None:
    init_home(cli.home)
    for key, value in (("port", str(free_port())), ("control_port", str(free_port())),
                       ("backend", "embedded"), ("coordinator_url", coordinator)):
        assert cli("config", "set", key, value).returncode == 0
    del cli.env["INFERNET_CONTROL_PORT"]


def test_healthy_setup_passes(cli: Cli) -> None:
    with fake_coordinator() as url:
        setup(cli, url)
        code, checks = doctor(cli)
        human = cli("doctor")
    assert code == 0, checks
    assert all(c["status"] != "fail" for c in checks.values()), checks
    for name in ("Config", "Node key", "Backend", "P2P port", "Control port", "Disk space",
                 "Log file", "Coordinator", "Clock", "mDNS"):
        assert checks[name]["status"] == "ok", checks[name]
    assert checks["Node"]["status"] == "warn"  # not running: says how to start it
    assert "infernet start --detach" in checks["Node"]["fix"]
    assert "GPU" in checks
    assert human.returncode == 0 and "[OK]   Coordinator" in human.stdout


def test_broken_setup_fails_with_fixes(cli: Cli) -> None:
    with fake_coordinator(skew_s=120) as url:
        setup(cli, url)
        with socket.socket() as busy:
            busy.bind(("0.0.0.0", 0))
            busy.listen()
            port = busy.getsockname()[1]
            assert cli("config", "set", "port", str(port)).returncode == 0
            (cli.home / "keys" / "node.key").chmod(0o644)
            (cli.home / "config.json").chmod(0o644)  # `config set` itself keeps it 0600
            code, checks = doctor(cli)
            human = cli("doctor")
    assert code == 1 and human.returncode == 1
    assert checks["Node key"]["status"] == "fail"
    assert "chmod 600" in checks["Node key"]["fix"]
    assert checks["Config"]["status"] == "warn" and "chmod 600" in checks["Config"]["fix"]
    assert checks["P2P port"]["status"] == "fail" and "port" in checks["P2P port"]["fix"]
    assert checks["Clock"]["status"] == "fail" and "ahead" not in checks["Clock"]["detail"]
    assert "NTP" in checks["Clock"]["fix"]
    assert "[FAIL] Node key" in human.stdout and "fix: chmod 600" in human.stdout


def test_unreachable_coordinator_and_invalid_config(cli: Cli) -> None:
    setup(cli, f"http://127.0.0.1:{free_port()}")
    code, checks = doctor(cli)
    assert code == 1 and checks["Coordinator"]["status"] == "fail"
    (cli.home / "config.json").write_text("{")
    (cli.home / "keys" / "node.key").unlink()
    code, checks = doctor(cli)
    assert code == 1
    assert checks["Config"]["status"] == "fail" and "not valid JSON" in checks["Config"]["detail"]
    assert checks["Node key"]["status"] == "fail" and "infernet init" in checks["Node key"]["fix"]
