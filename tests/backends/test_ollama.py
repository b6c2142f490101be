"""`OllamaBackend` against the fake Ollama on loopback: wire format, pulls, and faults."""

from __future__ import annotations

import json

import pytest

from infernet.backends.base import ChatMessage, ChatRequest, ModelInfo, PullProgress, Usage
from infernet.backends.ollama import OllamaBackend
from infernet.protocol.errors import BackendError
from tests.backends.fake_http import FakeServer, Reply, Request
from tests.backends.fake_ollama import LAYER, FakeOllama

REQUEST = ChatRequest(
    model="qwen2.5:7b",
    messages=(
        ChatMessage(role="system", content="Be brief."),
        ChatMessage(role="user", content="one two three four"),
    ),
    max_tokens=3,
    temperature=0.5,
    top_p=0.9,
    stop=("END",),
    seed=42,
)


@pytest.fixture
async def ollama(fake_ollama: FakeOllama):
    backend = OllamaBackend(fake_ollama.url)
    yield backend
    await backend.aclose()


async def stream_error(backend: OllamaBackend, model: str) -> tuple[list[str], BackendError]:
    texts: list[str] = []
    with pytest.raises(BackendError) as info:
        async for item in backend.stream_chat(
            ChatRequest(model=model, messages=(ChatMessage(role="user", content="a b c d"),))
        ):
            if not isinstance(item, Usage):
                texts.append(item.text)
    return texts, info.value


async def test_chat_sends_ollama_options_and_reads_engine_counts(
    ollama: OllamaBackend, fake_ollama: FakeOllama, drain
) -> None:
    texts, usage = await drain(ollama.stream_chat(REQUEST))
    assert texts == ["one ", "two ", "three "]
    assert usage == Usage(prompt_tokens=6, completion_tokens=3, finish_reason="length")
    sent = fake_ollama.requests[-1]
    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert sent.json() == {
        "model": "qwen2.5:7b",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "one two three four"},
        ],
        "stream": True,
        "options": {"num_predict": 3, "temperature": 0.5, "top_p": 0.9, "seed": 42,
                    "stop": ["END"]},
    }  # fmt: skip


async def test_list_models_has_sizes_digests_params_and_loaded_state(
    ollama: OllamaBackend,
) -> None:
    models = {m.name: m for m in await ollama.list_models()}
    qwen = models["qwen2.5:7b"]
    assert qwen.size_bytes == 4_683_087_332
    assert qwen.digest is not None and qwen.digest.startswith("sha256:") and len(qwen.digest) == 71
    assert (qwen.parameter_count, qwen.quantization, qwen.loaded) == (7_600_000_000, "Q4_K_M", True)
    assert models["llama3.2:3b"].loaded is False


async def test_list_models_without_api_ps_leaves_loaded_unknown(nursery) -> None:
    async def old_ollama(request: Request, reply: Reply) -> None:
        if request.path == "/api/tags":
            await reply.send(200, {"models": [{"name": "m:latest", "size": 1}]})
        else:
            await reply.send(404, "404 page not found", content_type="text/plain")

    server = FakeServer(old_ollama)
    backend = OllamaBackend(await nursery.start(server.serve))
    try:
        assert await backend.list_models() == [ModelInfo(name="m:latest", size_bytes=1)]
    finally:
        await backend.aclose()


async def test_pull_streams_progress_then_success(
    ollama: OllamaBackend, fake_ollama: FakeOllama
) -> None:
    records = [r async for r in ollama.pull("tinyllama:latest")]
    assert records[0] == PullProgress(status="pulling manifest")
    layers = [r for r in records if r.digest]
    assert {r.total for r in layers} == {LAYER}
    assert [r.completed for r in layers[:4]] == [0, 1 << 20, 2 << 20, 3 << 20]
    assert len({r.digest for r in layers}) == 2
    assert [r.status for r in records[-3:]] == [
        "verifying sha256 digest", "writing manifest", "success"]  # fmt: skip
    assert "tinyllama:latest" in {m.name for m in await ollama.list_models()}
    assert fake_ollama.requests[0].json()["stream"] is True


async def test_pull_of_an_unknown_model_is_model_not_found(ollama: OllamaBackend) -> None:
    with pytest.raises(BackendError) as info:
        async for _ in ollama.pull("no-such-model:70b"):
            pass
    assert info.value.code == "model_not_found"
    assert "no-such-model:70b" in info.value.message and "file does not exist" in info.value.message


async def test_disk_full_during_pull_says_so(ollama: OllamaBackend) -> None:
    seen: list[PullProgress] = []
    with pytest.raises(BackendError) as info:
        async for record in ollama.pull("huge"):
            seen.append(record)
    assert seen and seen[-1].completed == LAYER  # progress arrived before the failure
    assert info.value.code == "internal_error"
    assert "ran out of disk space" in info.value.message
    assert "no space left on device" in info.value.message


async def test_ollama_dying_mid_pull_is_node_disconnected(ollama: OllamaBackend) -> None:
    with pytest.raises(BackendError) as info:
        async for _ in ollama.pull("cut"):
            pass
    assert info.value.code == "node_disconnected"


async def test_remove_deletes_and_unknown_is_model_not_found(
    ollama: OllamaBackend, fake_ollama: FakeOllama
) -> None:
    await ollama.remove("llama3.2:3b")
    assert fake_ollama.requests[-1].method == "DELETE"
    assert json.loads(fake_ollama.requests[-1].body)["model"] == "llama3.2:3b"
    assert "llama3.2:3b" not in {m.name for m in await ollama.list_models()}
    with pytest.raises(BackendError) as info:
        await ollama.remove("llama3.2:3b")
    assert info.value.code == "model_not_found"


async def test_ollama_dying_mid_stream_is_node_disconnected(ollama: OllamaBackend) -> None:
    texts, error = await stream_error(ollama, "crash")
    assert texts == ["a ", "b "]
    assert error.code == "node_disconnected" and "died mid-stream" in error.message


async def test_malformed_line_is_internal_error(ollama: OllamaBackend) -> None:
    texts, error = await stream_error(ollama, "garbage")
    assert texts == ["a "]
    assert error.code == "internal_error" and "malformed" in error.message


async def test_error_line_mid_stream_is_internal_error(ollama: OllamaBackend) -> None:
    _, error = await stream_error(ollama, "boom")
    assert error.code == "internal_error" and "error was encountered" in error.message


async def test_http_500_keeps_ollamas_message(ollama: OllamaBackend) -> None:
    _, error = await stream_error(ollama, "http500")
    assert error.code == "internal_error"
    assert "HTTP 500" in error.message and "llama runner process has terminated" in error.message


async def test_unknown_model_is_model_not_found_with_ollamas_message(
    ollama: OllamaBackend,
) -> None:
    _, error = await stream_error(ollama, "nope:1b")
    assert error.code == "model_not_found" and "try pulling it first" in error.message


async def test_garbage_model_list_is_internal_error(nursery) -> None:
    async def html(request: Request, reply: Reply) -> None:
        await reply.send(200, "<html>hello</html>", content_type="text/html")

    backend = OllamaBackend(await nursery.start(FakeServer(html).serve))
    try:
        assert await backend.health() is True  # /api/tags answers 200...
        with pytest.raises(BackendError) as info:
            await backend.list_models()  # ...but not with a model list
        assert info.value.code == "internal_error"
    finally:
        await backend.aclose()


async def test_a_done_line_without_counts_reports_zero_not_an_estimate(nursery, drain) -> None:
    async def cached(request: Request, reply: Reply) -> None:
        await reply.start_stream()
        await reply.line({"message": {"content": "hi"}, "done": False})
        await reply.line({"message": {"content": ""}, "done": True, "eval_count": 1})
        await reply.end_stream()

    backend = OllamaBackend(await nursery.start(FakeServer(cached).serve))
    try:
        texts, usage = await drain(backend.stream_chat(REQUEST))
    finally:
        await backend.aclose()
    assert texts == ["hi"] and (usage.prompt_tokens, usage.completion_tokens) == (0, 1)
