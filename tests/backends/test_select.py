"""Auto-selection with real listeners on loopback ports (configurable, so free ones)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import httpx
import msgspec
import pytest
import trio

from infernet.backends.base import ChatMessage, ChatRequest
from infernet.backends.engines import PROBE_ORDER, engine_url, normalize_url
from infernet.backends.instances import InstanceRouter
from infernet.backends.ollama import OllamaBackend
from infernet.backends.openai_compat import OpenAICompatBackend
from infernet.backends.select import open_backend, probe_engine, select_backend
from infernet.node.config import NodeConfig, load_config, save_config
from infernet.protocol.errors import BackendError
from tests.backends.fake_http import FakeServer, Reply, Request, openai_engine, routes

OLLAMA_TAGS = {"models": [{"name": "qwen2.5:7b", "size": 1}]}


def openai_routes(owned_by: str) -> dict[str, tuple[int, object]]:
    listing = {"object": "list", "data": [{"id": "m", "object": "model", "owned_by": owned_by}]}
    return {"/health": (200, {"status": "ok"}), "/v1/models": (200, listing)}


ENGINE_ROUTES = {
    "ollama": {"/api/tags": (200, OLLAMA_TAGS)},
    "vllm": openai_routes("vllm"),
    "sglang": openai_routes("sglang"),
    "max": openai_routes("modular"),
    "llamacpp": openai_routes("llamacpp"),
}


def free_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def config_for(urls: dict[str, str], **extra: object) -> NodeConfig:
    """Point every engine at its own port: a listener's URL, else a closed port."""
    hosts = {f"{kind}_host": urls.get(kind) or free_url() for kind in PROBE_ORDER}
    return NodeConfig(**hosts, probe_timeout=2.0, **extra)  # type: ignore[arg-type]


async def start(nursery: trio.Nursery, kind: str) -> str:
    return str(await nursery.start(FakeServer(routes(ENGINE_ROUTES[kind])).serve))


@pytest.mark.parametrize("first", PROBE_ORDER)
async def test_first_healthy_in_probe_order_wins(nursery: trio.Nursery, first: str) -> None:
    # every engine from `first` on answers; the ones before it are not running
    running = PROBE_ORDER[PROBE_ORDER.index(first):]
    urls = {kind: await start(nursery, kind) for kind in running}
    selection = await select_backend(config_for(urls), env={})
    assert (selection.kind, selection.url) == (first, urls[first])
    assert selection.reason.startswith("auto: first engine to answer")
    assert [p.healthy for p in selection.probes] == [k in running for k in PROBE_ORDER]


@pytest.mark.parametrize("alone", PROBE_ORDER)
async def test_each_engine_alone_is_found(nursery: trio.Nursery, alone: str) -> None:
    url = await start(nursery, alone)
    selection = await select_backend(config_for({alone: url}), env={})
    assert (selection.kind, selection.url) == (alone, url)


async def test_max_and_llamacpp_on_one_port_are_told_apart_by_owner(nursery) -> None:
    llama = str(await nursery.start(FakeServer(routes(openai_routes("llama-swap"))).serve))
    selection = await select_backend(config_for({"max": llama, "llamacpp": llama}), env={})
    assert (selection.kind, selection.url) == ("llamacpp", llama)
    (max_probe,) = [p for p in selection.probes if p.kind == "max"]
    assert not max_probe.healthy and "owned by llamacpp" in max_probe.detail

    other = str(await nursery.start(FakeServer(routes(openai_routes("modular"))).serve))
    selection = await select_backend(config_for({"max": other, "llamacpp": other}), env={})
    assert selection.kind == "max"


async def test_a_web_service_with_health_is_not_an_engine(nursery) -> None:
    # the coordinator also listens on 8080 and answers /health, but /v1/models needs a token
    coordinator = routes({"/health": (200, {"status": "ok"}),
                          "/v1/models": (401, {"error": {"message": "missing bearer token"}})})
    url = str(await nursery.start(FakeServer(coordinator).serve))
    selection = await select_backend(config_for({"max": url, "llamacpp": url}), env={})
    assert selection.kind == "embedded" and selection.url is None
    assert "/v1/models is HTTP 401" in selection.reason


async def test_nothing_answering_falls_back_to_embedded_and_says_why() -> None:
    selection = await select_backend(config_for({}), env={})
    assert selection.kind == "embedded"
    assert "no engine answered" in selection.reason
    assert all(p.detail == "connection refused" for p in selection.probes)
    assert [p.kind for p in selection.probes] == list(PROBE_ORDER)


async def test_a_silent_listener_costs_one_probe_timeout(nursery) -> None:
    async def hang(request: Request, reply: Reply) -> None:
        await trio.sleep_forever()

    silent = str(await nursery.start(FakeServer(hang).serve))
    vllm = await start(nursery, "vllm")
    config = msgspec.structs.replace(config_for({"ollama": silent, "vllm": vllm}),
                                     probe_timeout=0.3)  # fmt: skip
    started = trio.current_time()
    selection = await select_backend(config, env={})
    assert selection.kind == "vllm"
    assert trio.current_time() - started < 2.0  # probes run concurrently
    assert "ollama" in selection.reason and "no answer within 0.3s" in selection.reason


async def test_engine_env_vars_locate_the_engines(nursery) -> None:
    url = await start(nursery, "sglang")
    port = url.rsplit(":", 1)[1]
    env = {spec: f"http://127.0.0.1:{free_url().rsplit(':', 1)[1]}" for spec in
           ("OLLAMA_HOST", "VLLM_HOST", "MODULAR_MAX_HOST", "LLAMACPP_HOST")}  # fmt: skip
    env["SGLANG_HOST"] = f"0.0.0.0:{port}"  # a bind address, as servers are often set up
    selection = await select_backend(NodeConfig(probe_timeout=2.0), env=env)
    assert (selection.kind, selection.url) == ("sglang", url)


def test_engine_urls_are_normalized() -> None:
    assert engine_url("ollama", "", {}) == "http://127.0.0.1:11434"
    assert engine_url("ollama", "", {"OLLAMA_HOST": "0.0.0.0"}) == "http://127.0.0.1:11434"
    assert engine_url("vllm", "gpu-box:8001", {"VLLM_HOST": "x"}) == "http://gpu-box:8001"
    assert engine_url("max", "", {"MODULAR_MAX_HOST": "https://h/"}) == "https://h:8080"
    assert normalize_url("http://[::1]:9000/", 1) == "http://[::1]:9000"


async def test_override_from_env_skips_probing(tmp_path: Path, nursery) -> None:
    url = await start(nursery, "ollama")  # would win an auto selection
    save_config(tmp_path, config_for({"ollama": url}))
    env = {"INFERNET_BACKEND": "vllm"}
    selection = await select_backend(load_config(tmp_path, env), env=env)
    assert selection.kind == "vllm" and selection.probes == ()
    assert selection.reason == "backend=vllm from INFERNET_BACKEND"


async def test_open_backend_logs_choice_and_reason(nursery, tmp_path: Path, caplog) -> None:
    url = await start(nursery, "ollama")
    caplog.set_level(logging.INFO, logger="infernet.backends")
    async with open_backend(config_for({"ollama": url}), tmp_path, env={}) as backend:
        assert isinstance(backend, OllamaBackend) and backend.base_url == url
        assert await backend.health()
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("backend:")]
    assert line.startswith(f"backend: ollama at {url} (auto: first engine to answer")


@pytest.mark.parametrize("kind", ["vllm", "sglang", "max", "llamacpp"])
async def test_open_backend_names_the_openai_family(nursery, tmp_path: Path, kind: str) -> None:
    url = await start(nursery, kind)
    config = config_for({kind: url}, backend=kind)
    async with open_backend(config, tmp_path, env={}) as backend:
        assert isinstance(backend, OpenAICompatBackend)
        assert (backend.name, backend.base_url) == (kind, url)
        expected = "alias" if kind == "llamacpp" else "huggingface"
        assert backend.capabilities.model_naming == expected


async def test_an_explicit_engine_that_is_down_is_an_error(tmp_path: Path) -> None:
    config = config_for({}, backend="vllm")
    with pytest.raises(BackendError) as info:
        async with open_backend(config, tmp_path, env={}):
            pass
    assert info.value.code == "backend_unavailable"
    assert "no healthy vllm" in info.value.message and "VLLM_HOST" in info.value.message


async def test_no_engine_and_no_embedded_start_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(BackendError) as info:
        async with open_backend(config_for({}), tmp_path, env={}, start_embedded=False):
            pass
    assert info.value.code == "backend_unavailable" and "no engine running" in info.value.message


async def test_backend_url_with_auto_identifies_that_one_engine(nursery, tmp_path) -> None:
    url = await start(nursery, "llamacpp")
    selection = await select_backend(NodeConfig(backend_url=url, probe_timeout=2.0), env={})
    assert (selection.kind, selection.url) == ("llamacpp", url)


async def test_cli_backend_url_still_means_llamacpp(nursery, tmp_path: Path) -> None:
    url = await start(nursery, "llamacpp")
    config = NodeConfig(backend="llamacpp", backend_url=url)  # what `start --backend-url` sets
    async with open_backend(config, tmp_path, env={"LLAMACPP_HOST": free_url()}) as backend:
        assert backend.name == "llamacpp" and await backend.health()


async def test_vllm_instances_route_each_model_to_its_instance(nursery, tmp_path, drain) -> None:
    a = str(await nursery.start(FakeServer(openai_engine(["Qwen/A"], tag="from-a")).serve))
    b = str(await nursery.start(FakeServer(openai_engine(["Qwen/B"], tag="from-b")).serve))
    config = NodeConfig(backend="vllm", vllm_instances=(a, f"Qwen/C={b}"))
    async with open_backend(config, tmp_path, env={}) as backend:
        assert isinstance(backend, InstanceRouter) and backend.name == "vllm"
        assert {m.name for m in await backend.list_models()} == {"Qwen/A", "Qwen/B"}
        for model, tag in (("Qwen/A", "from-a"), ("Qwen/B", "from-b")):
            request = ChatRequest(model=model, messages=(ChatMessage(role="user", content="hi"),))
            texts, _ = await drain(backend.stream_chat(request))
            assert texts[0].strip() == tag
        route = backend.route("Qwen/C")
        assert route is not None and route.base_url == b  # pinned in config


async def test_auto_probes_vllm_instances(nursery) -> None:
    down = free_url()
    up = str(await nursery.start(FakeServer(openai_engine(["Qwen/A"])).serve))
    config = msgspec.structs.replace(config_for({}), vllm_instances=(down, up))
    selection = await select_backend(config, env={})
    assert (selection.kind, selection.url) == ("vllm", up)


async def test_probe_of_garbage_ollama_answer(nursery) -> None:
    url = str(await nursery.start(FakeServer(routes({"/api/tags": (200, "<html>")})).serve))
    async with httpx.AsyncClient() as client:
        result = await probe_engine(client, "ollama", url, 2.0)
    assert not result.healthy and "not an Ollama model list" in result.detail


@pytest.mark.slow
async def test_auto_with_nothing_running_starts_the_embedded_engine(
    tmp_path: Path, model_cache: Path, exclusive_engine: None, drain
) -> None:
    config = config_for({}, model_cache=str(model_cache), engine_slots=1)
    async with open_backend(config, tmp_path, env={}) as backend:
        assert backend.name == "embedded" and backend.capabilities.supervised
        assert await backend.health()
        (model,) = await backend.list_models()
        assert model.name == "gemma3-270m" and model.loaded is True
