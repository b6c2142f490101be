"""Shared fixtures for the backend tests: the model cache, one shared real engine, the fake
Ollama, and a stream-contract checker.

The real engine: two llama.cpp servers on two cores collapse (notes/embedded-engine.md), so
the tests of this package share one engine (`shared_engine`, started on first use with 2
threads and 4 slots, stopped when the package's tests end). A test that must run its own
engine requests `exclusive_engine`, which stops the shared one first; the next test that
needs it starts it again. So never more than one engine runs at a time.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest
import trio

from infernet.backends.base import StreamItem, TextDelta, Usage
from infernet.backends.embedded import EMBEDDED_MODEL, ensure_model
from tests.backends.fake_ollama import FakeOllama

Drain = Callable[[AsyncIterator[StreamItem]], Awaitable[tuple[list[str], Usage]]]

ENGINE_THREADS = 2
ENGINE_SLOTS = 4
ENGINE_START_TIMEOUT = 60.0


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Where the embedded GGUF is assembled: shared across tests and runs (~240 MB)."""
    configured = os.environ.get("INFERNET_MODEL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "infernet" / "models"


class SharedEngine:
    """The package's one real engine, as its own process (``embedded_server``)."""

    def __init__(self, model_cache: Path, root: Path) -> None:
        self._model_cache = model_cache
        self._root = root
        self._proc: subprocess.Popen[bytes] | None = None
        self._url = ""
        self.starts = 0

    @property
    def log_path(self) -> Path:
        return self._root / "shared-engine.log"

    def url(self) -> str:
        """The running engine's base URL; starts it (and waits for health) if needed."""
        if self._proc is not None and self._proc.poll() is None:
            return self._url
        model = ensure_model(self._model_cache)
        port_file = self._root / f"engine-{self.starts}.port"
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "infernet.backends.embedded_server",
                 "--model", str(model), "--threads", str(ENGINE_THREADS),
                 "--parallel", str(ENGINE_SLOTS), "--ctx", "4096", "--alias", EMBEDDED_MODEL,
                 "--port-file", str(port_file), "--parent-pid", str(os.getpid())],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        self.starts += 1
        deadline = time.monotonic() + ENGINE_START_TIMEOUT
        while time.monotonic() < deadline:  # poll with a deadline: no event to wait on
            if self._proc.poll() is not None:
                raise AssertionError(f"engine exited: {self.log_path.read_text()[-2000:]}")
            if port_file.exists() and port_file.read_text().strip().isdigit():
                self._url = f"http://127.0.0.1:{port_file.read_text().strip()}"
                try:
                    if httpx.get(self._url + "/health", timeout=2).status_code == 200:
                        return self._url
                except httpx.HTTPError:
                    pass  # not listening yet: poll again
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"engine not healthy in {ENGINE_START_TIMEOUT}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
        self._proc = None


@pytest.fixture(scope="package")
def engine_pool(
    model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SharedEngine]:
    """The package's engine holder (starts nothing by itself)."""
    pool = SharedEngine(model_cache, tmp_path_factory.mktemp("shared-engine"))
    yield pool
    pool.stop()


@pytest.fixture
def shared_engine(engine_pool: SharedEngine) -> str:
    """Base URL of the shared real engine (2 threads, 4 slots, model `EMBEDDED_MODEL`)."""
    return engine_pool.url()


@pytest.fixture
def exclusive_engine(engine_pool: SharedEngine) -> None:
    """Stop the shared engine so this test may run its own."""
    engine_pool.stop()


@pytest.fixture
async def fake_ollama(nursery: trio.Nursery) -> FakeOllama:
    """A fake Ollama on a loopback port (see `tests.backends.fake_ollama`)."""
    fake = FakeOllama()
    await nursery.start(fake.serve)
    return fake


async def _drain(stream: AsyncIterator[StreamItem]) -> tuple[list[str], Usage]:
    """Consume a `Backend.stream_chat` stream, checking the contract every adapter keeps:
    non-empty `TextDelta`s, then exactly one `Usage`, last."""
    texts: list[str] = []
    usage: Usage | None = None
    async for item in stream:
        assert usage is None, f"item after the final Usage: {item!r}"
        if isinstance(item, TextDelta):
            assert item.text, "empty TextDelta"
            texts.append(item.text)
        else:
            assert isinstance(item, Usage)
            usage = item
    assert usage is not None, "stream ended without a Usage"
    return texts, usage


@pytest.fixture
def drain() -> Drain:
    """The stream-contract checker (see `_drain`)."""
    return _drain
