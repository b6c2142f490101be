"""``infernet doctor`` on a healthy and on a broken setup (no node running: no engine)."""

from __future__ import annotations

import email.utils
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import trio

from infernet.cli.doctor import run_checks
from infernet.node import hardware
from infernet.node.config import NodeConfig, init_home, save_config
from tests.backends.fake_http import FakeServer, openai_engine
from tests.backends.fake_ollama import FakeOllama
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


# -- GPU driver ----------------------------------------------------------------------------------

REAL_GPU = shutil.which("nvidia-smi") is not None or Path("/dev/nvidia0").exists()
SMI_HEADER = ("| NVIDIA-SMI 545.29.06   Driver Version: 545.29.06   CUDA Version: {cuda}   |\n")


def fake_nvidia_smi(cli: Cli, tmp_path: Path, script: str) -> None:
    """Put an ``nvidia-smi`` shell script first on the node's PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    tool = bin_dir / "nvidia-smi"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)
    cli.env["PATH"] = f"{bin_dir}{os.pathsep}{cli.env['PATH']}"


def working_smi(cuda: str) -> str:
    return ('case "$1" in --query-gpu=*) echo "NVIDIA GeForce RTX 4090, 24564, 24000";;\n'
            f'*) printf "%s" "{SMI_HEADER.format(cuda=cuda)}";; esac\n')


def gpu_checks(cli: Cli) -> tuple[int, dict[str, dict[str, str]]]:
    init_home(cli.home)
    cli.env.update(INFERNET_BACKEND="embedded", INFERNET_PORT=str(free_port()))
    return doctor(cli)


@pytest.mark.skipif(REAL_GPU, reason="this machine has an NVIDIA GPU")
def test_cpu_only_node_warns_about_the_gpu_and_passes(cli: Cli) -> None:
    code, checks = gpu_checks(cli)
    assert code == 0, checks
    driver = checks["GPU driver"]
    assert driver["status"] == "warn" and "CPU-only node" in driver["detail"]
    assert "NVIDIA driver" in driver["fix"] and "ROCm" in driver["fix"]
    assert checks["GPU"]["status"] == "warn"


def test_a_working_nvidia_driver_reports_its_versions(cli: Cli, tmp_path: Path) -> None:
    fake_nvidia_smi(cli, tmp_path, working_smi("12.4"))
    code, checks = gpu_checks(cli)
    assert checks["GPU driver"] == {"name": "GPU driver", "status": "ok",
                                    "detail": "NVIDIA 545.29.06, CUDA 12.4", "fix": ""}
    assert checks["GPU"]["status"] == "ok"
    if not REAL_GPU:  # pynvml answers first on a machine with a real GPU
        assert checks["GPU"]["detail"].startswith("NVIDIA GeForce RTX 4090 (24 GiB) via nvidia-smi")
    assert code == 0, checks


def test_an_old_cuda_warns(cli: Cli, tmp_path: Path) -> None:
    fake_nvidia_smi(cli, tmp_path, working_smi("11.8"))
    code, checks = gpu_checks(cli)
    driver = checks["GPU driver"]
    assert driver["status"] == "warn" and "CUDA 11.8" in driver["detail"]
    assert "12.1" in driver["fix"]
    assert code == 0


def test_a_gpu_whose_driver_is_broken_fails(cli: Cli, tmp_path: Path) -> None:
    fake_nvidia_smi(cli, tmp_path, "echo \"NVIDIA-SMI has failed because it couldn't "
                    "communicate with the NVIDIA driver.\"\nexit 9\n")
    code, checks = gpu_checks(cli)
    driver = checks["GPU driver"]
    assert code == 1
    assert driver["status"] == "fail"
    assert "exited with status 9: NVIDIA-SMI has failed" in driver["detail"]
    assert "nvidia-smi" in driver["fix"] and "reboot" in driver["fix"]
    human = cli("doctor")
    assert human.returncode == 1 and "[FAIL] GPU driver: NVIDIA GPU driver unusable" in human.stdout


def test_a_real_h200_as_doctor_reports_it(cli: Cli, tmp_path: Path) -> None:
    recorded = Path(__file__).parents[1] / "node" / "fixtures" / "h200"  # see its README
    fake_nvidia_smi(cli, tmp_path, f'case "$1" in --query-gpu=*) cat "{recorded}/nvidia-smi-query'
                    f'.csv";;\n*) cat "{recorded}/nvidia-smi.txt";; esac\n')  # fmt: skip
    code, checks = gpu_checks(cli)
    assert checks["GPU driver"] == {"name": "GPU driver", "status": "ok",
                                    "detail": "NVIDIA 580.159.04, CUDA 13.0", "fix": ""}
    if not REAL_GPU:  # pynvml answers first on a machine with a real GPU
        assert checks["GPU"]["detail"] == "NVIDIA H200 (140 GiB) via nvidia-smi, tier >=48gb"
    assert code == 0, checks


async def test_models_in_sync_with_the_engine_when_no_node_runs(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    fake = FakeOllama()
    await nursery.start(fake.serve)
    init_home(tmp_path)
    save_config(tmp_path, NodeConfig(backend="ollama", ollama_host=fake.url, port=0,
                                     served_models=("qwen2.5:7b", "mistral:7b")))  # fmt: skip
    checks = {c.name: c for c in await trio.to_thread.run_sync(run_checks, tmp_path)}
    assert checks["Backend"].status == "ok"
    models = checks["Models"]
    assert models.status == "warn"
    assert models.detail.startswith("served_models lists mistral:7b but ollama has qwen2.5:7b")
    assert "infernet model install" in models.fix
    assert checks["VRAM fit"].status in ("ok", "warn")  # depends on this machine's memory

    save_config(tmp_path, NodeConfig(backend="ollama", ollama_host=fake.url, port=0,
                                     served_models=("qwen2.5:7b",)))  # fmt: skip
    checks = {c.name: c for c in await trio.to_thread.run_sync(run_checks, tmp_path)}
    assert (checks["Models"].status, checks["Models"].detail) == ("ok", "in sync: qwen2.5:7b")


async def test_a_real_h200_serving_the_72b_at_fp16_on_vllm_warns_by_how_much(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorded = Path(__file__).parents[1] / "node" / "fixtures" / "h200" / "nvidia-smi-query.csv"
    info = hardware.HardwareInfo(gpus=tuple(hardware.parse_nvidia_smi(recorded.read_text())),
                                 gpu_source="nvidia-smi", ram_total_bytes=64 * 1024**3)  # fmt: skip
    monkeypatch.setattr(hardware, "detect_hardware", lambda *a, **k: info)
    served = ("Qwen/Qwen2.5-72B-Instruct", "Qwen/Qwen2.5-72B-Instruct-AWQ")
    url = await nursery.start(FakeServer(openai_engine(list(served))).serve)
    init_home(tmp_path)
    save_config(tmp_path, NodeConfig(backend="vllm", vllm_host=url, port=0,
                                     served_models=served))  # fmt: skip
    checks = {c.name: c for c in await trio.to_thread.run_sync(run_checks, tmp_path)}
    assert checks["GPU"].detail == "NVIDIA H200 (140 GiB) via nvidia-smi, tier >=48gb"
    fit = checks["VRAM fit"]
    assert fit.status == "warn"
    assert fit.detail == (  # the name says 72B: 144 GB of FP16 weights; the AWQ fits
        "Qwen/Qwen2.5-72B-Instruct needs ~161.9 GiB (134.1 GiB weights + 27.8 GiB for KV "
        "cache and runtime): does not fit, 35.6 GiB more than the 126.4 GiB that vLLM, SGLang "
        "and MAX use of 140.4 GiB (90 %); pick a smaller model or a 4-bit repo (e.g. -AWQ)"
    )
    assert "infernet model recommend" in fit.fix
