"""Keeping an engine process alive: restart with backoff when it dies or stops answering.

Owns: `EngineSupervisor`, the loop that watches a started engine (`SupervisedEngine`: the
embedded llama.cpp child) and restarts it, its tuning (`SupervisorConfig`) and its
`statistics()`. DESIGN.md "Backends" (the embedded default is supervised) and §3 "Runtime"
(every background task lives in a nursery owned by the component that started it).

Invariants:
- The supervisor never stops by itself: it runs until cancelled, and a failed restart is
  retried after a longer delay rather than raised (the node keeps serving what it can and
  answers ``backend_unavailable`` meanwhile).
- The delay before restart n (counting since the engine last stayed up ``stable_after``
  seconds) is ``min(backoff_initial * 2**n, backoff_max)``: a crash loop cannot spin the CPU.
- An engine that fails ``health_failures`` health checks in a row (one every
  ``health_interval`` seconds) is stopped (SIGTERM, then SIGKILL) and restarted like a dead one.
- Every restart and its reason is logged.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal, Protocol

import msgspec
import trio
from trio_typing import TaskStatus

from infernet.backends.openai_compat import OpenAICompatBackend
from infernet.protocol.errors import BackendError

__all__ = [
    "EngineSupervisor",
    "SupervisedEngine",
    "SupervisorConfig",
    "SupervisorStatistics",
    "supervise",
]

log = logging.getLogger(__name__)

SupervisorState = Literal["running", "restarting"]


class SupervisedEngine(Protocol):
    """An engine process the supervisor can watch and restart (`EmbeddedEngine`)."""

    @property
    def pid(self) -> int | None: ...

    @property
    def adapter(self) -> OpenAICompatBackend | None: ...

    async def start(self) -> None: ...

    async def wait(self) -> int: ...

    async def stop(self) -> None: ...


class SupervisorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How often to check the engine and how to back off between restarts (seconds)."""

    health_interval: float = 5.0
    health_failures: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    stable_after: float = 60.0


class SupervisorStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """What the supervisor has seen: state, restarts so far, and the last failure."""

    state: SupervisorState
    restarts: int
    pid: int | None
    last_failure: str | None


class EngineSupervisor:
    """Watches a started engine and restarts it; run `run` in a nursery."""

    def __init__(
        self, engine: SupervisedEngine, config: SupervisorConfig, *, name: str = "embedded"
    ) -> None:
        self._engine = engine
        self._config = config
        self._name = name
        self._state: SupervisorState = "running"
        self._restarts = 0
        self._last_failure: str | None = None
        self._restarted = trio.Event()

    def statistics(self) -> SupervisorStatistics:
        """A snapshot of the supervisor's state."""
        return SupervisorStatistics(
            state=self._state,
            restarts=self._restarts,
            pid=self._engine.pid,
            last_failure=self._last_failure,
        )

    async def wait_restarts(self, count: int) -> None:
        """Wait until the engine has been restarted ``count`` times in all (and is healthy
        again: a restart counts once `start` returned). Cancel-safe."""
        while self._restarts < count:
            await self._restarted.wait()

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise the (already started) engine until cancelled. Cancel-safe.

        Never raises on engine failures: they are logged and the engine restarted.
        """
        task_status.started()
        attempts = 0  # restarts since the engine last stayed up `stable_after` seconds
        while True:
            up_since = trio.current_time()
            reason = await self._watch()
            self._last_failure = reason
            if trio.current_time() - up_since >= self._config.stable_after:
                attempts = 0
            attempts = await self._restart(reason, attempts)

    async def _watch(self) -> str:
        """Return once the engine has died or was stopped for failing health checks."""
        misses = 0
        while True:
            with trio.move_on_after(self._config.health_interval):
                status = await self._engine.wait()
                return f"exited with status {status}"
            adapter = self._engine.adapter
            misses = 0 if adapter is not None and await adapter.health() else misses + 1
            if misses >= self._config.health_failures:
                log.warning(
                    "%s engine pid=%s failed %d health checks in a row; stopping it",
                    self._name,
                    self._engine.pid,
                    misses,
                )
                await self._engine.stop()
                return f"unhealthy ({misses} failed health checks)"

    async def _restart(self, reason: str, attempts: int) -> int:
        """Restart the engine, backing off after each failure; return the attempt count."""
        self._state = "restarting"
        while True:
            delay = min(self._config.backoff_initial * 2**attempts, self._config.backoff_max)
            log.warning(
                "%s engine %s; restarting in %.1fs (restart %d)",
                self._name,
                reason,
                delay,
                self._restarts + 1,
            )
            await trio.sleep(delay)  # backoff, not a wait for an event
            attempts += 1
            try:
                await self._engine.start()
            except BackendError as exc:
                reason = f"failed to restart: {exc}"
                self._last_failure = reason
                continue
            self._restarts += 1
            self._state = "running"
            self._restarted.set()
            self._restarted = trio.Event()
            log.info("%s engine restarted: pid=%s", self._name, self._engine.pid)
            return attempts


@asynccontextmanager
async def supervise(
    engine: SupervisedEngine, config: SupervisorConfig, *, name: str = "embedded"
) -> AsyncIterator[EngineSupervisor]:
    """Supervise the started ``engine`` for the duration of the block.

    The supervisor task runs in a nursery owned by this block and is cancelled on exit
    (stopping the engine is the caller's job). The block's own exception is re-raised as
    itself, not wrapped in an ExceptionGroup by the nursery, so callers keep catching
    `BackendError`.
    """
    supervisor = EngineSupervisor(engine, config, name=name)
    failure: BaseException | None = None
    async with trio.open_nursery() as nursery:
        await nursery.start(supervisor.run)
        try:
            yield supervisor
        except BaseException as exc:  # re-raised below, outside the nursery
            failure = exc
        finally:
            nursery.cancel_scope.cancel()
    if failure is not None:
        raise failure
