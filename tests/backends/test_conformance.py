"""One conformance suite, run against every adapter.

Subjects: an in-process echo backend (the reference), Ollama (against the fake Ollama on
loopback: it cannot be installed here), and, marked slow, the OpenAI-compatible family
(llama.cpp, vLLM, SGLang, MAX, and vLLM behind the instance router) and the embedded adapter
against the real embedded llama.cpp engine shared by this package (see conftest).
"""

from __future__ import annotations

import socket
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass

import pytest
import trio

from infernet.backends.base import (
    Backend,
    BackendCapabilities,
    ChatMessage,
    ChatRequest,
    ModelInfo,
    PullProgress,
    StreamItem,
    TextDelta,
    Usage,
)
from infernet.backends.embedded import EMBEDDED_MODEL, attach_embedded_engine
from infernet.backends.instances import InstanceRouter
from infernet.backends.openai_compat import OpenAICompatBackend
from infernet.backends.select import make_engine_backend
from infernet.protocol.errors import BackendError
from tests.backends.fake_ollama import FakeOllama

REAL = ("llamacpp", "vllm", "sglang", "max", "vllm-instances", "embedded")
SUBJECTS = [
    "echo",
    "ollama",
    *(pytest.param(kind, marks=pytest.mark.slow) for kind in REAL),
]


class EchoBackend:
    """The reference adapter: echoes the last message's words; pull/remove in memory."""

    name = "echo"
    capabilities = BackendCapabilities(pull=True, remove=True, model_naming="alias")

    def __init__(self, *, alive: bool = True) -> None:
        self.alive = alive
        self.models = {"echo-1": ModelInfo(name="echo-1", size_bytes=10, digest="sha256:e1")}
        self.registry = {"echo-2": ModelInfo(name="echo-2", size_bytes=20, digest="sha256:e2")}

    def _check(self) -> None:
        if not self.alive:
            raise BackendError("echo is down", code="backend_unavailable")

    async def health(self) -> bool:
        return self.alive

    async def list_models(self) -> list[ModelInfo]:
        self._check()
        return list(self.models.values())

    async def stream_chat(self, request: ChatRequest) -> AsyncGenerator[StreamItem, None]:
        self._check()
        if request.model not in self.models:
            raise BackendError(f"no {request.model}", code="model_not_found")
        words = request.messages[-1].content.split()
        limit = request.max_tokens or len(words)
        for word in words[:limit]:
            await trio.lowlevel.checkpoint()
            yield TextDelta(text=word + " ")
        yield Usage(prompt_tokens=len(words), completion_tokens=min(limit, len(words)),
                    finish_reason="length" if limit < len(words) else "stop")  # fmt: skip

    async def pull(self, model: str) -> AsyncGenerator[PullProgress, None]:
        self._check()
        if model not in self.registry:
            raise BackendError(f"no {model} in the registry", code="model_not_found")
        yield PullProgress(status="pulling", completed=0, total=20, digest="sha256:e2")
        self.models[model] = self.registry[model]
        yield PullProgress(status="success")

    async def remove(self, model: str) -> None:
        self._check()
        if self.models.pop(model, None) is None:
            raise BackendError(f"no {model}", code="model_not_found")


@dataclass
class Subject:
    backend: Backend
    model: str
    name: str
    dead: Callable[[], AsyncIterator[Backend]]  # an async context manager factory


def dead_url() -> str:
    with socket.socket() as s:  # free a moment ago, nothing listens now
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@asynccontextmanager
async def _openai(kind: str, url: str) -> AsyncIterator[Backend]:
    if kind == "vllm-instances":
        router = InstanceRouter("vllm", [OpenAICompatBackend(url, "vllm")])
        try:
            yield router
        finally:
            await router.aclose()
        return
    if kind == "embedded":
        async with attach_embedded_engine(url) as embedded:
            yield embedded
        return
    adapter = make_engine_backend(kind, url)  # type: ignore[arg-type]
    try:
        yield adapter
    finally:
        await adapter.aclose()


@asynccontextmanager
async def _echo_dead() -> AsyncIterator[Backend]:
    yield EchoBackend(alive=False)


@pytest.fixture(params=SUBJECTS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def engine_url(kind: str, request: pytest.FixtureRequest) -> str | None:
    return str(request.getfixturevalue("shared_engine")) if kind in REAL else None


@pytest.fixture
async def subject(
    kind: str, engine_url: str | None, fake_ollama: FakeOllama
) -> AsyncIterator[Subject]:
    async with AsyncExitStack() as stack:
        if kind == "echo":
            yield Subject(EchoBackend(), "echo-1", "echo", _echo_dead)
            return
        if kind == "ollama":
            backend = await stack.enter_async_context(_openai_or_ollama("ollama", fake_ollama.url))
            yield Subject(backend, "qwen2.5:7b", "ollama",
                          lambda: _openai_or_ollama("ollama", dead_url()))  # fmt: skip
            return
        assert engine_url is not None
        backend = await stack.enter_async_context(_openai(kind, engine_url))
        name = "vllm" if kind == "vllm-instances" else kind
        yield Subject(backend, EMBEDDED_MODEL, name, lambda: _openai(kind, dead_url()))


@asynccontextmanager
async def _openai_or_ollama(kind: str, url: str) -> AsyncIterator[Backend]:
    adapter = make_engine_backend("ollama", url)
    try:
        yield adapter
    finally:
        await adapter.aclose()


def chat(model: str, text: str = "What is the capital of France?", **kwargs: object) -> ChatRequest:
    return ChatRequest(
        model=model,
        messages=(ChatMessage(role="user", content=text),),
        **kwargs,  # type: ignore[arg-type]
    )


# --- the suite -----------------------------------------------------------------------------


async def test_name_health_and_capabilities(subject: Subject) -> None:
    assert subject.backend.name == subject.name
    assert await subject.backend.health() is True
    caps = subject.backend.capabilities
    assert isinstance(caps, BackendCapabilities)
    assert caps.model_naming in ("ollama", "huggingface", "alias")


async def test_lists_the_model(subject: Subject) -> None:
    models = await subject.backend.list_models()
    assert all(isinstance(m, ModelInfo) and m.name for m in models)
    assert subject.model in {m.name for m in models}


async def test_stream_contract_and_engine_usage(subject: Subject, drain) -> None:
    texts, usage = await drain(subject.backend.stream_chat(chat(subject.model, max_tokens=8)))
    assert texts and "".join(texts).strip()
    assert usage.prompt_tokens > 0
    assert 0 < usage.completion_tokens <= 8
    assert usage.finish_reason in ("stop", "length")


async def test_max_tokens_bounds_the_answer(subject: Subject, drain) -> None:
    request = chat(subject.model, "one two three four five six seven eight nine ten",
                   max_tokens=3, temperature=0.0, top_p=0.9, seed=7, stop=("zzz",))  # fmt: skip
    _, usage = await drain(subject.backend.stream_chat(request))
    assert 0 < usage.completion_tokens <= 3
    if usage.completion_tokens == 3 and subject.name != "embedded":
        assert usage.finish_reason == "length"


async def test_unknown_model_is_model_not_found(subject: Subject) -> None:
    await subject.backend.list_models()  # adapters check names against their listing
    with pytest.raises(BackendError) as info:
        async for _ in subject.backend.stream_chat(chat("no-such-model:1b")):
            pass
    assert info.value.code == "model_not_found"


async def test_cancelled_stream_then_a_full_one(subject: Subject, drain) -> None:
    long = chat(subject.model, "Tell a long story about a dragon. " * 3, max_tokens=64)
    with trio.CancelScope() as scope:
        async with aclosing(subject.backend.stream_chat(long)) as items:
            async for item in items:
                assert isinstance(item, TextDelta)
                scope.cancel()
    assert scope.cancelled_caught
    texts, usage = await drain(subject.backend.stream_chat(chat(subject.model, max_tokens=4)))
    assert texts and usage.completion_tokens > 0


async def test_concurrent_streams_each_complete(subject: Subject, drain) -> None:
    results: list[Usage] = []

    async def one(text: str) -> None:
        _, usage = await drain(subject.backend.stream_chat(chat(subject.model, text,
                                                                max_tokens=6)))  # fmt: skip
        results.append(usage)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one, "Name a colour.")
        nursery.start_soon(one, "Name an animal.")
    assert len(results) == 2 and all(u.completion_tokens > 0 for u in results)


async def test_pull_and_remove_follow_capabilities(subject: Subject) -> None:
    caps = subject.backend.capabilities
    with pytest.raises(BackendError) as pulled:
        async for _ in subject.backend.pull("no-such-model:1b"):
            pass
    assert pulled.value.code == ("model_not_found" if caps.pull else "bad_request")
    with pytest.raises(BackendError) as removed:
        await subject.backend.remove("no-such-model:1b")
    assert removed.value.code == ("model_not_found" if caps.remove else "bad_request")


async def test_dead_engine_is_backend_unavailable(subject: Subject) -> None:
    async with subject.dead() as dead:
        assert await dead.health() is False
        with pytest.raises(BackendError) as listed:
            await dead.list_models()
        assert listed.value.code == "backend_unavailable"
        with pytest.raises(BackendError) as streamed:
            async for _ in dead.stream_chat(chat(subject.model)):
                pass
        assert streamed.value.code == "backend_unavailable"
