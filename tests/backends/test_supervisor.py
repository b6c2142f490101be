"""`EngineSupervisor`: restarts with backoff, health checks, and a real engine killed."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import trio
import trio.testing

from infernet.backends.base import ChatMessage, ChatRequest, TextDelta
from infernet.backends.embedded import EMBEDDED_MODEL, open_embedded_engine
from infernet.backends.supervisor import EngineSupervisor, SupervisorConfig, supervise
from infernet.protocol.errors import BackendError

CONFIG = SupervisorConfig(
    health_interval=1.0, health_failures=3, backoff_initial=0.5, backoff_max=4.0, stable_after=60
)


class FakeAdapter:
    def __init__(self, engine: FakeEngine) -> None:
        self.engine = engine

    async def health(self) -> bool:
        if self.engine.health_script:
            answer = self.engine.health_script.pop(0)
            if not self.engine.health_script:
                self.engine.script_done.set()
            return answer
        return self.engine.healthy


class FakeEngine:
    """Scripted engine: `die()` ends the process; `fail_starts` makes starts raise."""

    def __init__(self) -> None:
        self.pid: int | None = 100
        self.healthy = True
        self.health_script: list[bool] = []
        self.script_done = trio.Event()
        self.fail_starts = 0
        self.starts: list[float] = []
        self.stops = 0
        self._exited = trio.Event()
        self._running = True

    @property
    def adapter(self) -> FakeAdapter | None:
        return FakeAdapter(self) if self._running else None

    def die(self) -> None:
        self._running = False
        self._exited.set()

    async def start(self) -> None:
        self.starts.append(trio.current_time())
        if self.fail_starts:
            self.fail_starts -= 1
            raise BackendError("engine failed to start")
        self.pid = (self.pid or 0) + 1
        self._exited = trio.Event()
        self._running = True
        self.healthy = True

    async def wait(self) -> int:
        await self._exited.wait()
        return -9

    async def stop(self) -> None:
        self.stops += 1
        self.die()


async def test_a_dead_engine_is_restarted_after_the_backoff(autojump_clock) -> None:
    engine = FakeEngine()
    async with supervise(engine, CONFIG) as supervisor:  # type: ignore[arg-type]
        died_at = trio.current_time()
        engine.die()
        await supervisor.wait_restarts(1)
        stats = supervisor.statistics()
    assert engine.starts[0] - died_at == pytest.approx(0.5)
    assert (stats.state, stats.pid, stats.last_failure) == ("running", 101, "exited with status -9")


async def test_backoff_doubles_up_to_the_cap_while_starts_fail(autojump_clock) -> None:
    engine = FakeEngine()
    engine.fail_starts = 5
    async with supervise(engine, CONFIG) as supervisor:  # type: ignore[arg-type]
        engine.die()
        t0 = trio.current_time()
        await supervisor.wait_restarts(1)
        assert supervisor.statistics().last_failure == "failed to restart: engine failed to start"
    gaps = [b - a for a, b in zip([t0, *engine.starts], engine.starts, strict=False)]
    assert gaps == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0])


async def test_a_crash_loop_keeps_backing_off_until_it_stays_up(autojump_clock) -> None:
    engine = FakeEngine()
    async with supervise(engine, CONFIG) as supervisor:  # type: ignore[arg-type]
        for restarts in (1, 2, 3):
            engine.die()
            await supervisor.wait_restarts(restarts)
        delays = [b - a for a, b in zip(engine.starts, engine.starts[1:], strict=False)]
        assert delays == pytest.approx([1.0, 2.0])  # died at once each time: backoff grows
        await trio.sleep(61)  # stays up past `stable_after`
        engine.die()
        before = trio.current_time()
        await supervisor.wait_restarts(4)
    assert engine.starts[-1] - before == pytest.approx(0.5)  # backoff reset


async def test_an_unhealthy_engine_is_stopped_and_restarted(autojump_clock) -> None:
    engine = FakeEngine()
    async with supervise(engine, CONFIG) as supervisor:  # type: ignore[arg-type]
        engine.healthy = False
        started = trio.current_time()
        await supervisor.wait_restarts(1)
    assert engine.stops == 1
    assert engine.starts[0] - started == pytest.approx(3 * 1.0 + 0.5)
    assert supervisor.statistics().last_failure == "unhealthy (3 failed health checks)"


async def test_one_failed_check_is_forgiven(autojump_clock) -> None:
    engine = FakeEngine()
    engine.health_script = [False, False, True] * 5  # a good check resets the count
    async with supervise(engine, CONFIG) as supervisor:  # type: ignore[arg-type]
        await engine.script_done.wait()
    assert (engine.stops, supervisor.statistics().restarts) == (0, 0)


async def test_leaving_the_block_stops_supervising_and_keeps_the_error(autojump_clock) -> None:
    engine = FakeEngine()
    with pytest.raises(BackendError, match="the caller's own"):
        async with supervise(engine, CONFIG):  # type: ignore[arg-type]
            raise BackendError("the caller's own")
    engine.die()
    await trio.sleep(10)
    assert engine.starts == []  # nobody restarts it any more


def test_statistics_is_a_frozen_record() -> None:
    supervisor = EngineSupervisor(FakeEngine(), CONFIG)  # type: ignore[arg-type]
    stats = supervisor.statistics()
    with pytest.raises(AttributeError):
        stats.restarts = 3  # type: ignore[misc]


# --- the real engine -----------------------------------------------------------------------


@pytest.mark.slow
async def test_real_engine_killed_mid_stream_is_restarted(
    tmp_path: Path, model_cache: Path, exclusive_engine: None, drain
) -> None:
    story = ChatRequest(model=EMBEDDED_MODEL, max_tokens=200,
                        messages=(ChatMessage(role="user", content="Count to one hundred."),))
    france = ChatRequest(model=EMBEDDED_MODEL, messages=(
        ChatMessage(role="user", content="What is the capital of France?"),))  # fmt: skip
    async with open_embedded_engine(tmp_path, model_cache=model_cache) as backend:
        supervisor = backend.supervisor
        assert supervisor is not None and backend.capabilities.supervised
        first_pid = backend.engine.pid  # type: ignore[attr-defined]
        with pytest.raises(BackendError) as info:
            async for item in backend.stream_chat(story):
                assert isinstance(item, TextDelta)
                os.kill(first_pid, signal.SIGKILL)  # the engine dies mid-answer
        assert info.value.code == "node_disconnected"

        with trio.fail_after(60):  # a restart takes ~2 s plus the backoff
            await supervisor.wait_restarts(1)
        assert await backend.health()
        assert backend.engine.pid != first_pid  # type: ignore[attr-defined]
        texts, usage = await drain(backend.stream_chat(france))
    assert "Paris" in "".join(texts) and usage.completion_tokens > 0
    log = (tmp_path / "logs" / "engine.log").read_text()
    assert log.count("--- infernet: starting") == 2
