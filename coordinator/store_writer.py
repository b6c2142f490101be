"""Trio access to the SQLite store: reads on a worker thread, writes by group commit.

Owns: `AsyncStore`, the only way trio code touches the database. ``call`` runs one store
method on a worker thread. ``write`` queues a store method and returns once the transaction
holding it committed; ``write_nowait`` queues it without waiting. While `AsyncStore.serve`
runs, a writer task takes everything queued since its last commit and runs it in one
transaction on one thread hop, so N concurrent jobs cost one commit instead of N
(group commit; the hot path of a job pays no disk wait it does not need).

Invariants:
- Writes are applied in the order they were queued; a read issued after ``write`` returned
  sees that write.
- One call at a time on the connection (``CapacityLimiter(1)``), reads and batches alike.
- On cancellation the writer commits what is queued before it exits (shielded), so a clean
  shutdown loses nothing that was queued.
- Without a running writer (unit tests, admin commands) ``write`` degrades to ``call``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

import trio
from trio_typing import TaskStatus

if TYPE_CHECKING:
    from coordinator.store import Store

__all__ = ["AsyncStore", "PendingWrite", "WriterStatistics"]

log = logging.getLogger("coordinator.store")

P = ParamSpec("P")
T = TypeVar("T")

MAX_BATCH: Final = 512


@dataclass(slots=True)
class PendingWrite:
    """A queued write; `wait` returns once it committed."""

    op: Callable[[], object]
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None

    async def wait(self) -> None:
        """Wait for the commit. Cancel-safe: the write commits anyway.

        Raises:
            sqlite3.Error: the write failed.
        """
        await self.done.wait()
        if self.error is not None:
            raise self.error


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    """Counters of the group-commit writer."""

    batches: int
    writes: int
    queued: int


class AsyncStore:
    """Runs `Store` calls off the trio thread, one at a time; batches writes."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._limiter = trio.CapacityLimiter(1)
        self._queue: list[PendingWrite] = []
        self._wakeup = trio.Event()
        self._serving = False
        self._batches = 0
        self._writes = 0

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` off the trio thread. Not cancel-safe mid-write:
        the write completes even if the caller is cancelled."""
        return await trio.to_thread.run_sync(
            lambda: fn(*args, **kwargs), limiter=self._limiter
        )

    def write_nowait(
        self, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs
    ) -> PendingWrite:
        """Queue a write for the next commit; failures are logged (and kept on the handle).

        Raises:
            RuntimeError: no writer is running (`serve`); use `write` where that can happen.
        """
        if not self._serving:
            raise RuntimeError("write_nowait needs a running AsyncStore.serve")
        item = PendingWrite(partial(fn, *args, **kwargs))
        self._enqueue(item)
        return item

    async def write(self, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue a write and wait until its transaction committed. Cancel-safe: a cancelled
        caller's write still commits.

        Raises:
            sqlite3.Error: the write itself failed (a constraint, a full disk...).
        """
        op = partial(fn, *args, **kwargs)
        if not self._serving:
            await self.call(op)
            return
        item = PendingWrite(op)
        self._enqueue(item)
        await item.wait()

    def _enqueue(self, item: PendingWrite) -> None:
        self._queue.append(item)
        self._wakeup.set()

    def statistics(self) -> WriterStatistics:
        """Batches committed, writes applied and writes waiting now."""
        return WriterStatistics(self._batches, self._writes, len(self._queue))

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the group-commit writer until cancelled; then commit what is queued."""
        self._serving = True
        task_status.started()
        try:
            while True:
                await self._wakeup.wait()
                await self._commit_queued()
        finally:
            with trio.CancelScope(shield=True):
                while self._queue:
                    await self._commit_queued()
                self._serving = False

    async def _commit_queued(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        if not self._queue:
            self._wakeup = trio.Event()
        if not batch:
            return
        # Shielded: a batch taken off the queue is committed even if we are being cancelled
        # (the thread cannot be interrupted anyway; busy_timeout bounds it).
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._run_batch, batch, limiter=self._limiter)
        self._batches += 1
        self._writes += len(batch)
        for item in batch:
            item.done.set()

    def _run_batch(self, batch: list[PendingWrite]) -> None:
        """On the worker thread: every write of ``batch`` in one transaction."""
        db = self.sync.transaction()
        try:
            db.execute("BEGIN")
            for item in batch:
                try:
                    item.op()
                except Exception as exc:  # one bad write must not sink its batch
                    item.error = exc
                    log.exception("store write failed")
            db.execute("COMMIT")
        except Exception as exc:  # the commit itself failed: every write in it is lost
            log.exception("store commit of %d writes failed", len(batch))
            if db.in_transaction:
                db.execute("ROLLBACK")
            for item in batch:
                item.error = item.error or exc
