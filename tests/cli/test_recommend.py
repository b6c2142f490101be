"""``infernet model recommend [--install-all] [--json]``: in-process against the fake Ollama,
and as a user runs it (subprocess, no engine running: the embedded engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from rich.console import Console

from infernet.cli.recommend import recommend_models
from infernet.node import hardware
from infernet.node.config import NodeConfig, init_home, load_config, save_config
from tests.backends.fake_http import FakeServer, openai_engine
from tests.backends.fake_ollama import FakeModel, FakeOllama
from tests.cli.conftest import Cli, closed_url, output
from tests.cli.conftest import console as _console

GIB = 1024**3


def console() -> Console:
    return _console(width=200)


@pytest.fixture(autouse=True)
def cpu_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """A CPU-only machine with 16 GiB of RAM, whatever this one has."""
    info = hardware.HardwareInfo(ram_total_bytes=16 * GIB, cpu_count=2)
    monkeypatch.setattr(hardware, "detect_hardware", lambda *a, **k: info)


@pytest.fixture
async def ollama_home(tmp_path: Path, nursery: trio.Nursery) -> tuple[Path, FakeOllama]:
    fake = FakeOllama()
    fake.registry["qwen2.5:1.5b"] = FakeModel("qwen2.5:1.5b", 2 * 3 * 1024 * 1024, "1.5B")
    await nursery.start(fake.serve)
    save_config(tmp_path, NodeConfig(backend="ollama", ollama_host=fake.url))
    return tmp_path, fake


async def test_recommend_marks_what_ollama_has(ollama_home: tuple[Path, FakeOllama]) -> None:
    home, _ = ollama_home
    c = console()
    assert await recommend_models(home, console=c, env={}) == 0
    lines = output(c).splitlines()
    assert lines[:2] == [
        "Tier cpu, 16.0 GiB RAM; engine ollama (Ollama tags)",
        "A model fits when its weights + 20 % + 1.0 GiB (KV cache, runtime) stay within "
        "16.0 GiB of RAM.",
    ]
    rows = [line.split() for line in lines]
    assert ["qwen2.5:1.5b", "(default)", "~715", "MiB", "~1.8", "GiB", "1b-3b", "cpu",
            "available"] in rows  # fmt: skip
    assert ["llama3.2:3b", "~1.5", "GiB", "~2.8", "GiB", "1b-3b", "cpu", "installed"] in rows
    assert "`infernet model recommend --install-all`" in output(c)


async def test_a_real_h200_on_vllm_is_offered_what_loads(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The H200's own nvidia-smi answer (see its README): 143,771 MiB. The 72B at FP16
    # (145.4 GB of weights) is not offered: vLLM takes 90 % of the card and needs KV cache
    # room on top; its AWQ repo is the tier default instead.
    recorded = Path(__file__).parents[1] / "node" / "fixtures" / "h200" / "nvidia-smi-query.csv"
    info = hardware.HardwareInfo(gpus=tuple(hardware.parse_nvidia_smi(recorded.read_text())),
                                 gpu_source="nvidia-smi", ram_total_bytes=64 * GIB)  # fmt: skip
    monkeypatch.setattr(hardware, "detect_hardware", lambda *a, **k: info)
    url = await nursery.start(FakeServer(openai_engine(["Qwen/Qwen2.5-32B-Instruct"])).serve)
    save_config(tmp_path, NodeConfig(backend="vllm", vllm_host=url))
    c, out = console(), console()
    assert await recommend_models(tmp_path, console=c, env={}) == 0
    assert [line.rstrip() for line in output(c).splitlines()][:8] == [
        "Tier >=48gb, 140.4 GiB VRAM; engine vllm (HuggingFace repo ids)",
        "A model fits when its weights + 20 % + 1.0 GiB (KV cache, runtime) stay within "
        "126.4 GiB, the 90 % of VRAM that vLLM, SGLang and MAX allocate.",
        "MODEL                                    SIZE       NEEDS      BAND     MIN TIER  STATUS",
        "Qwen/Qwen2.5-72B-Instruct-AWQ (default)  ~33.9 GiB  ~41.6 GiB  70b+     >=48gb    manual",
        "deepseek-ai/deepseek-coder-33b-instruct  ~61.5 GiB  ~74.8 GiB  30b-33b  >=24gb    manual",
        "Qwen/Qwen2.5-32B-Instruct                ~61.1 GiB  ~74.3 GiB  30b-33b  >=24gb    "
        "installed",
        "Qwen/Qwen2.5-14B-Instruct                ~27.6 GiB  ~34.1 GiB  13b-14b  >=12gb    manual",
        "meta-llama/Llama-3.1-8B-Instruct         ~14.9 GiB  ~18.9 GiB  7b       >=8gb     manual",
    ]
    assert await recommend_models(tmp_path, console=c, out=out, env={}) == 0
    doc = json.loads(output(out))
    assert (doc["budget_bytes"], doc["usable_bytes"]) == (143771 * 1024**2, 135_679_338_086)
    first = doc["models"][0]
    assert first["size_bytes"] == 36_350_000_000 and first["needed_bytes"] == 44_693_741_824
    assert all(m["needed_bytes"] <= doc["usable_bytes"] for m in doc["models"])


async def test_install_all_pulls_the_missing_ones(ollama_home: tuple[Path, FakeOllama]) -> None:
    home, fake = ollama_home
    c, out = console(), console()
    assert await recommend_models(home, install_all=True, console=c, out=out, env={}) == 0
    doc = json.loads(output(out))
    assert doc["installed_now"] == ["qwen2.5:1.5b"]
    assert doc["skipped"] == [] and doc["failed"] == []
    assert all(m["installed"] for m in doc["models"])
    assert "qwen2.5:1.5b" in fake.models
    assert "qwen2.5:1.5b" in load_config(home, {}).served_models
    assert "Installed qwen2.5:1.5b on ollama" in output(c)


async def test_a_failed_install_is_reported_and_exits_1(
    ollama_home: tuple[Path, FakeOllama],
) -> None:
    home, fake = ollama_home
    del fake.registry["qwen2.5:1.5b"]
    c, out = console(), console()
    assert await recommend_models(home, install_all=True, console=c, out=out, env={}) == 1
    (failed,) = json.loads(output(out))["failed"]
    assert (failed["model"], failed["code"]) == ("qwen2.5:1.5b", "model_not_found")
    assert "failed qwen2.5:1.5b:" in output(c)


async def test_an_engine_that_cannot_pull_is_skipped_with_a_hint(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    url = await nursery.start(FakeServer(openai_engine(["Qwen/Qwen2.5-1.5B-Instruct"])).serve)
    save_config(tmp_path, NodeConfig(backend="vllm", vllm_host=url))
    c, out = console(), console()
    assert await recommend_models(tmp_path, install_all=True, console=c, out=out, env={}) == 0
    doc = json.loads(output(out))
    assert doc["naming"] == "huggingface"
    models = {m["model"]: m for m in doc["models"]}
    assert models["Qwen/Qwen2.5-1.5B-Instruct"]["status"] == "installed"
    assert models["meta-llama/Llama-3.2-3B-Instruct"]["status"] == "manual"
    (skipped,) = doc["skipped"]
    assert skipped["model"] == "meta-llama/Llama-3.2-3B-Instruct"
    assert "vllm serve" in skipped["reason"]
    assert "skip meta-llama/Llama-3.2-3B-Instruct: vllm cannot download models" in output(c)


def test_recommend_json_without_an_engine(cli: Cli) -> None:
    init_home(cli.home)
    for kind in ("OLLAMA", "VLLM", "SGLANG", "MAX", "LLAMACPP"):
        cli.env[f"INFERNET_{kind}_HOST"] = closed_url()
    out = cli("model", "recommend", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["engine"] == "embedded" and doc["naming"] == "alias"
    first = doc["models"][0]
    assert (first["model"], first["default"], first["status"]) == ("gemma3-270m", True,
                                                                  "installed")  # fmt: skip
    assert all(m["status"] == "manual" for m in doc["models"][1:])

    out = cli("model", "recommend", "--install-all")
    assert out.returncode == 0, out.stderr
    assert "gemma3-270m (default)" in out.stdout
    skips = [line for line in out.stdout.splitlines() if line.startswith("skip ")]
    assert len(skips) == len(doc["models"]) - 1
    assert load_config(cli.home, {}).served_models == ()  # nothing was installed
