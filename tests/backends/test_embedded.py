"""The embedded engine: model preparation, the child process lifecycle, and a real answer.

Tests marked ``slow`` run the real llama.cpp engine (about 2 s to start on 2 cores) or
assemble the 240 MB model; the model cache is shared (``INFERNET_MODEL_CACHE``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import trio

from infernet.backends.base import ChatMessage, ChatRequest, TextDelta
from infernet.backends.embedded import (
    EMBEDDED_MODEL,
    EMBEDDED_MODEL_DIGEST,
    EmbeddedBackend,
    EmbeddedConfig,
    EmbeddedEngine,
    attach_embedded_engine,
    ensure_model,
    open_embedded_engine,
)
from infernet.protocol.errors import BackendError

FRANCE = ChatRequest(
    model=EMBEDDED_MODEL,
    messages=(ChatMessage(role="user", content="What is the capital of France?"),),
)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as c:
        yield c


def assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped, not a zombie: the pid no longer exists


# --- without a running engine ----------------------------------------------------------


async def test_backend_of_a_stopped_engine(tmp_path: Path, client: httpx.AsyncClient) -> None:
    engine = EmbeddedEngine(tmp_path, tmp_path / "m.gguf", EmbeddedConfig(), client)
    backend = EmbeddedBackend(engine)
    assert backend.name == "embedded"
    assert await backend.health() is False
    with pytest.raises(BackendError) as info:
        await backend.list_models()
    assert info.value.code == "backend_unavailable"
    with pytest.raises(BackendError) as info:
        async for _ in backend.stream_chat(FRANCE):
            pass
    assert info.value.code == "backend_unavailable"


async def test_capabilities_pull_and_remove(tmp_path: Path, client: httpx.AsyncClient) -> None:
    model_path = tmp_path / "m.gguf"
    model_path.write_bytes(b"GGUF" + bytes(60))
    engine = EmbeddedEngine(tmp_path, model_path, EmbeddedConfig(), client)
    backend = EmbeddedBackend(engine, model_path=model_path)
    caps = backend.capabilities
    assert (caps.pull, caps.remove, caps.multi_model, caps.supervised) == (
        False, False, False, False)  # fmt: skip
    (record,) = [r async for r in backend.pull(EMBEDDED_MODEL)]  # built in: nothing to fetch
    assert (record.status, record.completed, record.total) == ("success", 64, 64)
    with pytest.raises(BackendError) as info:
        async for _ in backend.pull("qwen2.5:7b"):
            pass
    assert info.value.code == "bad_request" and "Ollama" in info.value.message
    with pytest.raises(BackendError) as info:
        await backend.remove(EMBEDDED_MODEL)
    assert info.value.code == "bad_request"


async def test_other_models_are_not_found(tmp_path: Path, client: httpx.AsyncClient) -> None:
    backend = EmbeddedBackend(EmbeddedEngine(tmp_path, tmp_path, EmbeddedConfig(), client))
    request = ChatRequest(model="llama3", messages=FRANCE.messages)
    with pytest.raises(BackendError) as info:
        async for _ in backend.stream_chat(request):
            pass
    assert info.value.code == "model_not_found"


async def test_child_failing_at_startup_reports_its_log(
    tmp_path: Path, client: httpx.AsyncClient
) -> None:
    engine = EmbeddedEngine(tmp_path, tmp_path / "missing.gguf", EmbeddedConfig(), client)
    with pytest.raises(BackendError) as info:
        await engine.start()
    assert info.value.code == "backend_unavailable"
    assert "exited with status 2 during startup" in info.value.message
    assert "engine failed to start" in info.value.message  # the child's own stderr line
    assert engine.returncode == 2
    assert engine.log_path == tmp_path / "logs" / "engine.log"
    assert "missing.gguf" in engine.log_path.read_text()
    assert not list((tmp_path / "run").iterdir())  # no port file left behind


async def test_startup_deadline_kills_the_child(tmp_path: Path, client: httpx.AsyncClient) -> None:
    config = EmbeddedConfig(startup_timeout=0.05)
    engine = EmbeddedEngine(tmp_path, tmp_path / "missing.gguf", config, client)
    with pytest.raises(BackendError) as info:
        await engine.start()
    assert "not healthy after 0.05s" in info.value.message
    assert engine.returncode is not None and engine.pid is not None
    assert_gone(engine.pid)


def test_ensure_model_reuses_the_cache(model_cache: Path) -> None:
    path = ensure_model(model_cache)  # the first run of the suite assembles it (~2 s)
    started = time.monotonic()
    assert ensure_model(model_cache) == path == model_cache / "gemma-3-270m-q4_k_m.gguf"
    assert time.monotonic() - started < 5  # a hash check, not a rebuild
    assert EMBEDDED_MODEL_DIGEST.startswith("sha256:")


@pytest.mark.slow
def test_ensure_model_is_safe_concurrently_and_repairs(tmp_path: Path) -> None:
    results: list[Path | BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_model(tmp_path))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    (path,) = set(results)
    assert isinstance(path, Path) and path.stat().st_size > 200_000_000

    with path.open("r+b") as f:  # corrupt it: the next call must rebuild it
        f.write(b"garbage")
    size = path.stat().st_size
    assert ensure_model(tmp_path) == path
    assert path.stat().st_size == size
    assert path.read_bytes()[:4] == b"GGUF"
    assert not list(tmp_path.glob("*.partial"))


# --- the real engine ---------------------------------------------------------------------


@pytest.mark.slow
async def test_real_engine_answers_and_cleans_up(
    tmp_path: Path, model_cache: Path, exclusive_engine: None
) -> None:
    started = trio.current_time()
    async with open_embedded_engine(tmp_path, model_cache=model_cache) as backend:
        healthy_after = trio.current_time() - started
        engine = backend.engine
        pid = engine.pid
        assert pid is not None
        assert await backend.health() is True
        (model,) = await backend.list_models()
        assert (model.name, model.digest) == (EMBEDDED_MODEL, EMBEDDED_MODEL_DIGEST)
        assert (model.loaded, model.path) == (True, str(engine.model_path))
        assert model.parameter_count is not None and model.parameter_count > 200_000_000

        texts: list[str] = []
        async for item in backend.stream_chat(FRANCE):
            if isinstance(item, TextDelta):
                texts.append(item.text)
            else:
                usage = item
        answer = "".join(texts)
    print(f"healthy after {healthy_after:.2f}s; answer {answer!r}; {usage}")
    assert "Paris" in answer
    assert answer == answer.strip()
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.finish_reason == "stop"
    assert engine.returncode == 0  # SIGTERM: clean exit, no SIGKILL needed
    assert_gone(pid)
    assert "embedded_server: SIGTERM, stopping" in engine.log_path.read_text()
    assert "Traceback" not in engine.log_path.read_text()


@pytest.mark.slow
async def test_real_engine_survives_a_cancelled_stream(shared_engine: str, drain) -> None:
    story = ChatRequest(
        model=EMBEDDED_MODEL,
        messages=(ChatMessage(role="user", content="Tell a long story about a dragon."),),
        max_tokens=200,
    )
    async with attach_embedded_engine(shared_engine) as backend:
        with trio.CancelScope() as scope:
            async for item in backend.stream_chat(story):
                assert isinstance(item, TextDelta)
                scope.cancel()  # cancelled at the next read inside the adapter
        assert scope.cancelled_caught
        texts, usage = await drain(backend.stream_chat(FRANCE))
        assert "Paris" in "".join(texts) and usage.completion_tokens > 0
