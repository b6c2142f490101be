"""Trio access to the SQLite store: group-committed writes, reads on a worker thread.

Owns: `AsyncStore`, the only way trio code touches the database.

- ``write`` queues a store method and returns once the transaction holding it committed;
  ``write_nowait`` queues it without waiting. While `AsyncStore.serve` runs, a writer task
  takes everything queued since its last commit and commits it as one transaction (group
  commit: N concurrent jobs cost one commit).
- The commit runs on the trio thread itself. Measured here (bench notes in
  ``specs/http-api.md`` §"Durability"): a batch commits in ~25 µs (WAL, ``synchronous=
  NORMAL``: no fsync, the WAL append lands in the page cache) while a hop to a worker thread
  and back costs ~200 µs, ten times the work. What could stall the loop is a WAL
  checkpoint (it copies pages and fsyncs), so the writer connection never checkpoints by
  itself: a checkpointer task does it from its own connection on a worker thread.
- ``read`` runs a store method on a second connection on a worker thread (WAL readers never
  block the writer), one at a time.

Invariants:
- Writes are applied in the order they were queued; a read issued after ``write``
  returned sees that write.
- On cancellation the writer commits what is queued before it exits, so a clean shutdown
  loses nothing that was queued.
- Without a running writer (unit tests, admin commands) ``write`` degrades to a direct
  call on a worker thread and ``read`` uses the one connection.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Concatenate, Final, ParamSpec, TypeVar

import trio
from trio_typing import TaskStatus

if TYPE_CHECKING:
    from coordinator.store import Store

__all__ = ["AsyncStore", "PendingWrite", "WriterStatistics"]

log = logging.getLogger("coordinator.store")

P = ParamSpec("P")
T = TypeVar("T")

MAX_BATCH: Final = 512
CHECKPOINT_EVERY: Final = 5.0


@dataclass(slots=True)
class PendingWrite:
    """A queued write; `wait` returns once it committed."""

    op: Callable[[], object]
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None

    async def wait(self) -> None:
        """Wait for the commit (no checkpoint once it committed). Cancel-safe: the write
        commits anyway.

        Raises:
            sqlite3.Error: the write failed.
        """
        if not self.done.is_set():  # no trip through the scheduler once committed
            await self.done.wait()
        if self.error is not None:
            raise self.error


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    """Counters of the group-commit writer."""

    batches: int
    writes: int
    queued: int
    checkpoints: int


class AsyncStore:
    """Batches writes into inline commits; runs reads off the trio thread."""

    def __init__(self, store: Store) -> None:
        self.sync = store
        self._reader: Store | None = None
        self._limiter = trio.CapacityLimiter(1)
        self._queue: list[PendingWrite] = []
        self._wakeup = trio.Event()
        self._serving = False
        self._batches = 0
        self._writes = 0
        self._checkpoints = 0
        self._since_checkpoint = 0
        self._checkpointer: Store | None = None

    async def read(self, fn: Callable[Concatenate[Store, P], T], *args: P.args,
                   **kwargs: P.kwargs) -> T:
        """Run ``fn(store, *args, **kwargs)`` (a `Store` method, unbound) on the reader
        connection in a worker thread. Cancel-safe (the query finishes; its result is lost).

        Raises:
            sqlite3.Error: the query failed.
        """
        store = self._reader or self.sync
        return await trio.to_thread.run_sync(lambda: fn(store, *args, **kwargs),
                                             limiter=self._limiter)

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run any ``fn`` on a worker thread, one at a time (tests and admin tools; the
        coordinator reads with `read` and writes with `write`)."""
        return await trio.to_thread.run_sync(lambda: fn(*args, **kwargs), limiter=self._limiter)

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
        self._queue.append(item)
        self._wakeup.set()
        return item

    async def write(self, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Queue a write and wait until its transaction committed. Cancel-safe: a cancelled
        caller's write still commits.

        Raises:
            sqlite3.Error: the write itself failed (a constraint, a full disk...).
        """
        if not self._serving:
            await self.call(partial(fn, *args, **kwargs))
            return
        await self.write_nowait(fn, *args, **kwargs).wait()

    def statistics(self) -> WriterStatistics:
        """Batches committed, writes applied, writes waiting now, checkpoints run."""
        return WriterStatistics(self._batches, self._writes, len(self._queue),
                                self._checkpoints)

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the writer and the checkpointer until cancelled; then commit what is queued."""
        self.sync.transaction().execute("PRAGMA wal_autocheckpoint=0")
        self._reader = self.sync.open_again()
        self._checkpointer = checkpointer = self.sync.open_again()
        self._serving = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._checkpoint_loop)
                task_status.started()
                while True:
                    await self._wakeup.wait()
                    self._commit_queued()
                    await trio.lowlevel.checkpoint()  # let the jobs just woken run first
        finally:
            self._commit_queued()
            while self._queue:
                self._commit_queued()
            self._serving = False
            reader, self._reader, self._checkpointer = self._reader, None, None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self._close_helpers, reader, checkpointer,
                                              limiter=self._limiter)

    def _commit_queued(self) -> None:
        batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
        if not self._queue:
            self._wakeup = trio.Event()
        if not batch:
            return
        self._run_batch(batch)
        self._batches += 1
        self._writes += len(batch)
        self._since_checkpoint += 1
        for item in batch:
            item.done.set()

    def _run_batch(self, batch: list[PendingWrite]) -> None:
        """Every write of ``batch`` in one transaction (on the trio thread: see above)."""
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

    async def _checkpoint_loop(self) -> None:
        while True:
            await trio.sleep(CHECKPOINT_EVERY)  # periodic work, not a wait for an event
            if self._since_checkpoint:
                await self.checkpoint()

    async def checkpoint(self) -> bool:
        """Copy the WAL into the database now, on a worker thread with its own connection
        (never blocks the writer). False when no writer runs or the checkpoint failed."""
        checkpointer = self._checkpointer
        if checkpointer is None:
            return False
        self._since_checkpoint = 0
        try:
            await trio.to_thread.run_sync(
                lambda: checkpointer.transaction().execute("PRAGMA wal_checkpoint(PASSIVE)"))
        except sqlite3.Error as exc:  # busy or I/O: the next round tries again
            log.warning("WAL checkpoint failed: %s", exc)
            return False
        self._checkpoints += 1
        return True

    @staticmethod
    def _close_helpers(*stores: Store | None) -> None:
        for store in stores:
            if store is not None:
                store.close()
