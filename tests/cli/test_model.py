"""``infernet model install|remove|list`` against the fake Ollama on loopback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from infernet.cli.model import add_model_commands, install_model, list_models, remove_model
from infernet.node.config import NodeConfig, load_config, save_config
from infernet.node.owner import run_model_action
from infernet.protocol.delegation import OwnerCommand
from infernet.protocol.errors import BackendError
from tests.backends.fake_http import FakeServer, openai_engine
from tests.backends.fake_ollama import FakeOllama
from tests.cli.conftest import closed_url, console, output


@pytest.fixture
async def fake_ollama(nursery) -> FakeOllama:
    fake = FakeOllama()
    await nursery.start(fake.serve)
    return fake


@pytest.fixture
def home(tmp_path: Path, fake_ollama: FakeOllama) -> Path:
    save_config(tmp_path, NodeConfig(backend="ollama", ollama_host=fake_ollama.url, port=4242))
    return tmp_path


@pytest.fixture
def embedded_home(tmp_path: Path) -> Path:
    hosts = {f"{k}_host": closed_url() for k in ("ollama", "vllm", "sglang", "max", "llamacpp")}
    save_config(tmp_path, NodeConfig(**hosts))  # type: ignore[arg-type]
    return tmp_path


def test_the_commands_parse() -> None:
    parser = argparse.ArgumentParser(prog="infernet")
    add_model_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["model", "install", "qwen2.5:7b", "--verbose"])
    assert (args.command, args.model_command, args.name, args.verbose, args.force) == (
        "model", "install", "qwen2.5:7b", True, False)  # fmt: skip
    args = parser.parse_args(["model", "remove", "x", "--keep-weights"])
    assert (args.model_command, args.keep_weights) == ("remove", True)
    assert parser.parse_args(["model", "list", "--json"]).json is True
    args = parser.parse_args(["model", "recommend", "--install-all", "--json"])
    assert (args.model_command, args.install_all, args.json) == ("recommend", True, True)


async def test_install_pulls_with_progress_and_serves_it(home: Path) -> None:
    c = console()
    assert await install_model(home, "tinyllama:latest", verbose=True, console=c, env={}) == 0
    text = output(c)
    assert "Pulling tinyllama:latest into ollama..." in text
    assert "pulling manifest" in text and "verifying sha256 digest" in text
    assert "3.0/3.0 MiB 100%" in text  # rich's byte column for a finished layer
    assert " MiB/s " in text or " GiB/s " in text  # speeds in the same units as sizes
    assert "Installed tinyllama:latest on ollama (6 MiB)." in text
    # the engine's other models stay served: served_models was empty, i.e. "everything"
    config = load_config(home, {})
    assert config.served_models == ("qwen2.5:7b", "llama3.2:3b", "tinyllama:latest")
    assert config.port == 4242  # nothing else in the file changed


async def test_install_does_not_persist_env_overrides(home: Path) -> None:
    env = {"INFERNET_PORT": "9999"}
    await install_model(home, "tinyllama:latest", console=console(), env=env)
    assert load_config(home, {}).port == 4242


async def test_install_of_an_unknown_model_fails_and_changes_nothing(home: Path) -> None:
    with pytest.raises(BackendError) as info:
        await install_model(home, "no-such-model:1b", console=console(), env={})
    assert info.value.code == "model_not_found"
    assert load_config(home, {}).served_models == ()


async def test_disk_full_during_install(home: Path) -> None:
    with pytest.raises(BackendError) as info:
        await install_model(home, "huge", console=console(), env={})
    assert info.value.code == "internal_error" and "disk space" in info.value.message
    assert load_config(home, {}).served_models == ()


async def test_a_model_too_big_for_this_node_is_refused_before_download(
    home: Path, fake_ollama: FakeOllama
) -> None:
    with pytest.raises(BackendError) as info:
        await install_model(home, "qwen2.5:405b", console=console(), env={})
    assert info.value.code == "bad_request"
    assert "does not fit" in info.value.message and "--force" in info.value.message
    assert not any(r.path == "/api/pull" for r in fake_ollama.requests)


async def test_remove_deletes_and_stops_serving(home: Path, fake_ollama: FakeOllama) -> None:
    c = console()
    assert await remove_model(home, "llama3.2:3b", console=c, env={}) == 0
    assert "Deleted llama3.2:3b from ollama." in output(c)
    assert "llama3.2:3b" not in fake_ollama.models
    assert load_config(home, {}).served_models == ("qwen2.5:7b",)


async def test_removing_the_last_served_model_is_refused_before_anything_is_deleted(
    home: Path, fake_ollama: FakeOllama
) -> None:
    await remove_model(home, "llama3.2:3b", console=console(), env={})
    with pytest.raises(BackendError) as info:
        await remove_model(home, "qwen2.5:7b", console=console(), env={})
    assert info.value.code == "bad_request" and "only model" in info.value.message
    assert "qwen2.5:7b" in fake_ollama.models  # weights kept
    assert load_config(home, {}).served_models == ("qwen2.5:7b",)  # still served, not "all"


async def test_remove_keep_weights(home: Path, fake_ollama: FakeOllama) -> None:
    await remove_model(home, "llama3.2:3b", keep_weights=True, console=console(), env={})
    assert "llama3.2:3b" in fake_ollama.models
    assert load_config(home, {}).served_models == ("qwen2.5:7b",)


async def test_list_table_and_json(home: Path) -> None:
    save_config(home, NodeConfig(backend="ollama", ollama_host=load_config(home, {}).ollama_host,
                                 served_models=("qwen2.5:7b", "mistral")))  # fmt: skip
    c = console()
    assert await list_models(home, console=c, env={}) == 0
    lines = [line.split() for line in output(c).splitlines()]
    assert lines[0] == ["MODEL", "SIZE", "BACKEND", "STATUS"]
    assert ["qwen2.5:7b", "4.4", "GiB", "ollama", "loaded"] in lines  # `ollama list`: 4.7 GB
    assert ["llama3.2:3b", "1.9", "GiB", "ollama", "not", "served"] in lines
    assert ["mistral", "-", "ollama", "missing"] in lines

    c = console()
    await list_models(home, as_json=True, console=c, env={})
    rows = {row["model"]: row for row in json.loads(output(c))}
    assert rows["qwen2.5:7b"]["size_bytes"] == 4_683_087_332
    assert rows["qwen2.5:7b"]["digest"].startswith("sha256:")
    assert rows["mistral"]["status"] == "missing"


async def test_without_an_engine_the_built_in_model_is_listed(embedded_home: Path) -> None:
    c = console()
    await list_models(embedded_home, as_json=True, console=c, env={})
    (row,) = json.loads(output(c))
    assert (row["model"], row["backend"], row["status"]) == ("gemma3-270m", "embedded", "built-in")


async def test_without_an_engine_only_the_built_in_model_installs(embedded_home: Path) -> None:
    assert await install_model(embedded_home, "gemma3-270m", console=console(), env={}) == 0
    assert load_config(embedded_home, {}).served_models == ("gemma3-270m",)
    with pytest.raises(BackendError) as info:
        await install_model(embedded_home, "qwen2.5:7b", console=console(), env={})
    assert info.value.code == "backend_unavailable" and "no engine running" in info.value.message


async def test_an_engine_that_cannot_pull_accepts_what_it_serves(tmp_path: Path, nursery) -> None:
    url = await nursery.start(FakeServer(openai_engine(["Qwen/Qwen2.5-0.5B-Instruct"])).serve)
    save_config(tmp_path, NodeConfig(backend="vllm", vllm_host=url))
    c = console()
    assert await install_model(tmp_path, "Qwen/Qwen2.5-0.5B-Instruct", console=c, env={}) == 0
    assert "vllm already serves Qwen/Qwen2.5-0.5B-Instruct." in output(c)
    with pytest.raises(BackendError) as info:
        await install_model(tmp_path, "Qwen/Qwen2.5-1.5B-Instruct", console=console(), env={})
    assert info.value.code == "bad_request" and "vllm serve" in info.value.message


async def test_an_engine_error_is_never_mistaken_for_no_engine(home: Path) -> None:
    # Ollama runs but has no such model: the embedded fallback must not hide that
    with pytest.raises(BackendError) as info:
        await install_model(home, "gemma3-270m", console=console(), env={})
    assert info.value.code == "model_not_found"
    assert load_config(home, {}).served_models == ()


async def test_install_and_remove_json(home: Path) -> None:
    progress, out = console(), console()
    assert await install_model(home, "tinyllama:latest", console=progress, out=out, env={}) == 0
    doc = json.loads(output(out))
    assert doc == {"model": "tinyllama:latest", "engine": "ollama", "size_bytes": 6 * 1024 * 1024,
                   "served_models": ["qwen2.5:7b", "llama3.2:3b", "tinyllama:latest"]}
    assert "Installed" not in output(progress)  # the summary is the JSON document

    out = console()
    assert await remove_model(home, "tinyllama:latest", console=console(), out=out, env={}) == 0
    assert json.loads(output(out)) == {"model": "tinyllama:latest", "engine": "ollama",
                                       "deleted": True,
                                       "served_models": ["qwen2.5:7b", "llama3.2:3b"]}


async def test_an_owner_command_runs_the_same_steps_and_says_what_it_did(
        embedded_home: Path) -> None:
    def command(action: str) -> OwnerCommand:
        return OwnerCommand(action=action, user_pubkey="ab" * 32,  # type: ignore[arg-type]
                            node_pubkey="cd" * 32, model="gemma3-270m",
                            issued_at=1_800_000_000, nonce="00" * 16)

    summary = await run_model_action(embedded_home, command("model_install"))
    assert summary == "installed gemma3-270m on embedded; served_models: gemma3-270m"
    assert load_config(embedded_home, {}).served_models == ("gemma3-270m",)
    with pytest.raises(BackendError, match="only model this node serves"):
        await run_model_action(embedded_home, command("model_remove"))  # refused as the CLI
    assert load_config(embedded_home, {}).served_models == ("gemma3-270m",)
