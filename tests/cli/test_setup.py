"""``infernet setup``: as a user runs it (subprocess, temp INFERNET_HOME, no engine running),
and in-process against the fake Ollama for the engine and model choices."""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio
from rich.console import Console

from infernet.cli.setup import Defaults, SetupOptions, run_setup
from infernet.node import hardware
from infernet.node.config import NodeConfig, config_path, load_config, save_config
from infernet.protocol.errors import BackendError
from tests.backends.fake_ollama import FakeModel, FakeOllama
from tests.cli.conftest import Cli, closed_url, snapshot
from tests.cli.test_bad_input import assert_refused

GIB = 1024**3
ENGINES = ("ollama", "vllm", "sglang", "max", "llamacpp")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def no_engines() -> dict[str, str]:
    """Every engine probe points at a closed port, whatever runs on this machine."""
    return {f"INFERNET_{kind.upper()}_HOST": closed_url() for kind in ENGINES}


@pytest.fixture
def bare(cli: Cli) -> Cli:
    cli.env.update(no_engines())
    return cli


def setup_json(cli: Cli, *args: str) -> dict[str, object]:
    out = cli("setup", "--yes", "--json", *args)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    doc: dict[str, object] = json.loads(out.stdout)
    return doc


def test_fresh_node_gets_the_embedded_engine_and_a_working_config(bare: Cli) -> None:
    doc = setup_json(bare)
    assert doc["ok"] is True and doc["changed"] is True and doc["key_created"] is True
    assert str(doc["node_id"]).startswith("npub1")
    assert (doc["backend"], doc["model"], doc["model_action"]) == (
        "embedded", "gemma3-270m", "bundled")  # fmt: skip
    assert doc["served_models"] == ["gemma3-270m"]
    hw = doc["hardware"]
    assert isinstance(hw, dict) and hw["tier"] in ("cpu", ">=8gb", ">=12gb", ">=24gb", ">=48gb")
    assert doc["engines"] and not any(e["healthy"] for e in doc["engines"])  # type: ignore[union-attr]

    config = load_config(bare.home, {})
    assert (config.backend, config.served_models) == ("embedded", ("gemma3-270m",))
    assert config_path(bare.home).stat().st_mode & 0o777 == 0o600
    assert (bare.home / "keys" / "node.key").stat().st_mode & 0o777 == 0o600
    # The node key is delegated by a new user key, so the node can register and obey owners.
    assert isinstance(doc["user_id"], str) and len(doc["user_id"]) == 64
    assert (bare.home / "keys" / "user.key").stat().st_mode & 0o777 == 0o600
    assert (bare.home / "keys" / "delegation.cbor").is_file()

    bare.env["INFERNET_PORT"] = str(free_port())  # 46337 may be taken on a shared machine
    out = bare("doctor", "--json")
    checks = {c["name"]: c for c in json.loads(out.stdout)["checks"]}
    assert out.returncode == 0, checks
    assert not [c for c in checks.values() if c["status"] == "fail"], checks
    assert checks["Backend"]["status"] == "ok" and "embedded" in checks["Backend"]["detail"]


def test_rerun_changes_nothing(bare: Cli) -> None:
    setup_json(bare)
    before = snapshot(bare.home)
    doc = setup_json(bare)
    assert (doc["changed"], doc["key_created"], doc["model_action"]) == (False, False, "kept")
    assert snapshot(bare.home) == before

    human = bare("setup", input="")  # stdin not a terminal: no questions, same outcome
    assert human.returncode == 0, human.stderr
    assert "[1/" in human.stdout and "unchanged" in human.stdout
    assert "Keeping backend embedded serving gemma3-270m" in human.stdout
    assert snapshot(bare.home) == before


def test_human_output_names_each_step_and_the_way_to_ollama(bare: Cli) -> None:
    out = bare("setup", "--yes")
    assert out.returncode == 0, out.stderr
    for step in ("Node key and config", "Hardware", "Inference engines", "Model", "Config",
                 "Model install"):
        assert f"] {step}\n" in out.stdout, step
    assert "comes bundled with the embedded engine: nothing to download" in out.stdout
    assert "start Ollama (`ollama serve`" in out.stdout


def test_coordinator_is_written_and_a_rerun_can_change_it(bare: Cli) -> None:
    setup_json(bare)
    url = closed_url()
    doc = setup_json(bare, "--coordinator", url + "/")
    assert doc["coordinator_url"] == url and doc["changed"] is True
    assert load_config(bare.home, {}).coordinator_url == url
    assert load_config(bare.home, {}).backend == "embedded"  # the rest is kept
    assert doc["registered"] in (None, False)  # nothing answers at that URL


@pytest.mark.parametrize(("args", "needles"), [
    (["setup", "--coordinator", "coordinator.example"], ["not an http(s) URL", "https://HOST"]),
    (["setup", "--backend", "tensorrt"], ["invalid choice: 'tensorrt'"]),
    (["setup", "--backend", "embedded", "--model", "qwen2.5:7b"], ["only its bundled"]),
    (["setup", "--frobnicate"], ["unrecognized arguments: --frobnicate"]),
])
def test_bad_input_writes_nothing(bare: Cli, args: list[str], needles: list[str]) -> None:
    assert_refused(bare, args, *needles)


def test_an_engine_asked_for_must_answer(bare: Cli) -> None:
    out = bare("setup", "--yes", "--backend", "ollama")
    assert out.returncode == 1
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: Ollama is not answering") and "OLLAMA_HOST" in line
    assert load_config(bare.home, {}).backend == "auto"  # nothing chosen, nothing written


def test_invalid_config_is_refused(bare: Cli) -> None:
    bare.home.mkdir(parents=True)
    config_path(bare.home).write_text('{"backend": 3}')
    assert_refused(bare, ["setup", "--yes"], "$.backend", str(config_path(bare.home)))


# -- in process, against the fake Ollama --------------------------------------------------------

class Script:
    """Answers questions from a script; records what was asked."""

    def __init__(self, *answers: object) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    def _next(self, question: str, default: object) -> object:
        self.asked.append(question)
        return self.answers.pop(0) if self.answers else default

    def choose(self, question: str, choices: Sequence[str], default: str) -> str:
        answer = self._next(f"{question} {list(choices)} [{default}]", default)
        assert answer in choices
        return str(answer)

    def text(self, question: str, default: str) -> str:
        return str(self._next(f"{question} [{default}]", default))

    def confirm(self, question: str, default: bool) -> bool:
        return bool(self._next(question, default))


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


@pytest.fixture
def cpu_node(monkeypatch: pytest.MonkeyPatch) -> None:
    info = hardware.HardwareInfo(ram_total_bytes=16 * GIB, cpu_count=2)
    monkeypatch.setattr("infernet.cli.setup.detect_hardware", lambda *a, **k: info)


@pytest.fixture
async def ollama(nursery: trio.Nursery, cpu_node: None) -> FakeOllama:
    fake = FakeOllama()
    fake.registry["qwen2.5:1.5b"] = FakeModel("qwen2.5:1.5b", 2 * 3 * 1024 * 1024, "1.5B")
    await nursery.start(fake.serve)
    return fake


async def test_ollama_found_gets_the_tier_default_pulled(
    tmp_path: Path, ollama: FakeOllama
) -> None:
    env = no_engines() | {"INFERNET_OLLAMA_HOST": ollama.url}
    doc = await run_setup(tmp_path, SetupOptions(), console=quiet(), ask=Defaults(), env=env)
    assert (doc["backend"], doc["model"], doc["model_action"]) == ("ollama", "qwen2.5:1.5b",
                                                                  "installed")  # fmt: skip
    assert "qwen2.5:1.5b" in ollama.models
    config = load_config(tmp_path, {})
    assert config.backend == "ollama"
    assert config.ollama_host == ""  # the env override is not written into the file
    assert config.served_models == ("qwen2.5:7b", "llama3.2:3b", "qwen2.5:1.5b")

    again = await run_setup(tmp_path, SetupOptions(), console=quiet(), ask=Defaults(), env=env)
    assert (again["changed"], again["model_action"]) == (False, "kept")
    pulls = [r for r in ollama.requests if r.path == "/api/pull"]
    assert len(pulls) == 1


async def test_the_operator_picks_the_engine_and_model(tmp_path: Path, ollama: FakeOllama) -> None:
    env = no_engines() | {"INFERNET_OLLAMA_HOST": ollama.url}
    script = Script("ollama", "llama3.2:3b", True)
    doc = await run_setup(tmp_path, SetupOptions(), console=quiet(), ask=script, env=env)
    assert script.asked[0] == "Engine ['ollama', 'embedded'] [ollama]"
    assert script.asked[1] == "Model to serve [qwen2.5:1.5b]"
    assert script.asked[2] == "Set up backend ollama, model llama3.2:3b?"
    assert (doc["model"], doc["model_action"]) == ("llama3.2:3b", "already installed")
    assert not any(r.path == "/api/pull" for r in ollama.requests)  # nothing to download
    assert load_config(tmp_path, {}).backend == "ollama"


async def test_declining_writes_nothing(tmp_path: Path, ollama: FakeOllama) -> None:
    save_config(tmp_path, NodeConfig(port=4242))
    before = config_path(tmp_path).read_bytes()
    env = no_engines() | {"INFERNET_OLLAMA_HOST": ollama.url}
    doc = await run_setup(tmp_path, SetupOptions(), console=quiet(),
                          ask=Script("embedded", False), env=env)  # fmt: skip
    assert doc["ok"] is False and doc["cancelled"] is True
    assert config_path(tmp_path).read_bytes() == before


async def test_switching_engine_on_a_set_up_node(tmp_path: Path, ollama: FakeOllama) -> None:
    save_config(tmp_path, NodeConfig(backend="embedded", served_models=("gemma3-270m",)))
    env = no_engines() | {"INFERNET_OLLAMA_HOST": ollama.url}
    doc = await run_setup(tmp_path, SetupOptions(backend="ollama", model="llama3.2:3b"),
                          console=quiet(), ask=Defaults(), env=env)  # fmt: skip
    assert doc["changed"] is True
    config = load_config(tmp_path, {})
    # the embedded model means nothing to Ollama: served_models starts from Ollama's list
    assert (config.backend, config.served_models) == ("ollama", ("qwen2.5:7b", "llama3.2:3b"))


async def test_a_model_that_does_not_fit_is_refused(tmp_path: Path, ollama: FakeOllama) -> None:
    env = no_engines() | {"INFERNET_OLLAMA_HOST": ollama.url}
    with pytest.raises(BackendError) as info:
        await run_setup(tmp_path, SetupOptions(model="qwen2.5:72b"), console=quiet(),
                        ask=Defaults(), env=env)  # fmt: skip
    assert info.value.code == "bad_request" and "does not fit" in info.value.message
    assert not any(r.path == "/api/pull" for r in ollama.requests)
