"""The node's durable receipt queue: every receipt it signs, on disk until a coordinator has it.

Owns: ``$INFERNET_HOME/receipts/{pending,submitted,rejected}/<receipt id>.cbor`` (plus a
``.json`` beside submitted and rejected ones) as ``specs/receipts.md`` §7 lays them out;
`ReceiptStore` (the files, blocking calls, also used by the CLI) and `ReceiptQueue` (the
daemon's side: takes receipts from the job executor without blocking, writes them from a
task on a worker thread, and wakes the submitter).

Invariants:
- A file appears whole or not at all: temporary file in the same directory, fsync, rename,
  fsync of the directory. Files 0600, directories 0700. A file's name is its receipt id.
- ``pending/`` holds at most ``max_pending`` receipts; past that a receipt is logged and
  dropped. Nothing here ever fails or delays a job.
- The in-memory queue is bounded; what it still holds when the daemon stops is flushed
  (shielded, bounded in time) before the writer returns.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Final, Literal

import trio
from trio_typing import TaskStatus

from infernet.protocol.canonical import decode_record
from infernet.protocol.errors import InfernetError
from infernet.protocol.pricing import split_fee
from infernet.protocol.receipt import (
    MAX_RECEIPT_SIZE,
    Receipt,
    SignedReceipt,
    decode_countersigned_receipt,
    decode_signed_receipt,
    encode_receipt,
    receipt_id,
    verify_receipt,
)

__all__ = ["MAX_PENDING", "ReceiptQueue", "ReceiptStatistics", "ReceiptStatus", "ReceiptStore",
           "StoredReceipt"]

log = logging.getLogger("infernet.node.receipts")

MAX_PENDING: Final = 100_000
QUEUE_SIZE: Final = 1024  # receipts waiting for the writer task
WRITE_BATCH: Final = 64  # receipts written per worker-thread hop
FLUSH_TIMEOUT: Final = 5.0  # at shutdown, to write what is still queued
_NAME: Final = re.compile(r"\A[0-9a-f]{64}\Z")

ReceiptStatus = Literal["pending", "countersigned", "unwitnessed", "rejected"]


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    """One receipt on disk, decoded (its signature was checked when it was read)."""

    receipt_id: str
    status: ReceiptStatus
    receipt: Receipt
    stored_at: float  # when the file was written (its mtime)
    reason: str = ""  # why a coordinator refused it

    @property
    def node_amount(self) -> Decimal:
        """The operator's share of the value (after the platform fee)."""
        return split_fee(self.receipt.value).operator


@dataclass(frozen=True, slots=True)
class ReceiptStatistics:
    """How many receipts are in each state, and what the countersigned ones earned."""

    pending: int = 0
    countersigned: int = 0
    unwitnessed: int = 0
    rejected: int = 0
    dropped: int = 0  # since start: the queue or pending/ was full
    earned: dict[str, Decimal] = field(default_factory=dict)  # operator share, per chain


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReceiptStore:
    """The receipt files under ``home/receipts``. Blocking: call from a worker thread in the
    daemon (`ReceiptQueue` does); the CLI calls it directly."""

    def __init__(self, home: Path, *, max_pending: int = MAX_PENDING) -> None:
        self.root = home / "receipts"
        self.pending = self.root / "pending"
        self.submitted = self.root / "submitted"
        self.rejected = self.root / "rejected"
        self.max_pending = max_pending
        self._lock = threading.Lock()  # the writer and the submitter use worker threads
        self._pending_count: int | None = None  # counted once, then kept up to date

    def pending_count(self) -> int:
        """How many receipts wait in ``pending/`` (counted on first use)."""
        with self._lock:
            if self._pending_count is None:
                self._pending_count = len(self.ids(self.pending))
            return self._pending_count

    def ensure_dirs(self) -> None:
        """Create the three directories, 0700 (tightening existing ones)."""
        for d in (self.root, self.pending, self.submitted, self.rejected):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(d, 0o700)

    def ids(self, directory: Path) -> list[str]:
        """Receipt ids with a ``.cbor`` file in ``directory``, oldest file first."""
        found: list[tuple[float, str]] = []
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    stem, dot, ext = entry.name.partition(".")
                    if dot and ext == "cbor" and _NAME.match(stem):
                        try:
                            found.append((entry.stat().st_mtime, stem))
                        except FileNotFoundError:  # moved by the submitter meanwhile
                            continue
        except FileNotFoundError:
            return []
        return [rid for _, rid in sorted(found)]

    def write_pending(self, envelopes: list[bytes], ids: list[str] | None = None) -> int:
        """Write node-signed envelopes into ``pending/``; return how many were written
        (the rest found ``pending/`` full). One directory fsync for the whole batch.

        ``ids``, when given, are the envelopes' receipt ids (the daemon's queue has them
        already; otherwise each envelope is decoded for its id).

        Raises:
            OSError: a file cannot be written (those before it are).
            RemoteProtocolError: an envelope does not decode (those before it are written).
        """
        if not self.pending.is_dir():  # not per batch: ensure_dirs costs eight system calls
            self.ensure_dirs()
        room = self.max_pending - self.pending_count()
        batch = envelopes[:max(room, 0)]
        for i, envelope in enumerate(batch):
            rid = ids[i] if ids is not None else receipt_id(decode_signed_receipt(envelope).body)
            path = self.pending / f"{rid}.cbor"
            existed = path.exists()
            _write_atomic(path, envelope)
            if not existed:
                with self._lock:
                    self._pending_count = (self._pending_count or 0) + 1
        if batch:
            _fsync_dir(self.pending)
        return len(batch)

    def read_pending(self, rid: str) -> bytes | None:
        """The node-signed envelope of a pending receipt, None if it is gone."""
        try:
            return (self.pending / f"{rid}.cbor").read_bytes()
        except FileNotFoundError:
            return None

    def mark_submitted(self, rid: str, envelope: bytes, status: ReceiptStatus,
                       info: dict[str, Any]) -> None:
        """Move a pending receipt to ``submitted/`` with the envelope the coordinator returned."""
        self._move(rid, self.submitted, envelope, {"status": status, **info})

    def mark_rejected(self, rid: str, info: dict[str, Any]) -> None:
        """Move a pending receipt to ``rejected/`` with the coordinator's refusal."""
        envelope = self.read_pending(rid)
        if envelope is not None:
            self._move(rid, self.rejected, envelope, {"status": "rejected", **info})

    def _move(self, rid: str, target: Path, envelope: bytes, info: dict[str, Any]) -> None:
        self.ensure_dirs()
        _write_atomic(target / f"{rid}.json", json.dumps(info, sort_keys=True).encode() + b"\n")
        _write_atomic(target / f"{rid}.cbor", envelope)
        _fsync_dir(target)
        try:
            (self.pending / f"{rid}.cbor").unlink()
        except FileNotFoundError:
            return
        with self._lock:
            if self._pending_count:
                self._pending_count -= 1
        _fsync_dir(self.pending)

    def load(self, rid: str, status: ReceiptStatus) -> StoredReceipt | None:
        """One stored receipt, decoded and its node signature checked; None if unreadable."""
        directory = {"pending": self.pending, "rejected": self.rejected}.get(status,
                                                                            self.submitted)
        path = directory / f"{rid}.cbor"
        try:
            data = path.read_bytes()
            stored_at = path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            if status == "countersigned":
                cs = decode_countersigned_receipt(data)
                signed = SignedReceipt(body=cs.body, node_sig=cs.node_sig)
            else:
                signed = decode_signed_receipt(data)
            receipt = verify_receipt(signed).receipt
        except InfernetError:
            log.warning("receipt file %s does not decode or verify; left alone", path)
            return None
        reason = ""
        if status == "rejected":
            reason = str(self._info(self.rejected, rid).get("message", ""))
        return StoredReceipt(rid, status, receipt, stored_at, reason)

    def _info(self, directory: Path, rid: str) -> dict[str, Any]:
        try:
            info = json.loads((directory / f"{rid}.json").read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def _body(self, path: Path) -> Receipt | None:
        try:
            cs = decode_countersigned_receipt(path.read_bytes())
            return decode_record(cs.body, Receipt, max_size=MAX_RECEIPT_SIZE)
        except (OSError, InfernetError):
            return None

    def submitted_status(self, rid: str) -> ReceiptStatus:
        """countersigned or unwitnessed, from the side file (else the envelope's shape)."""
        status = self._info(self.submitted, rid).get("status")
        if status in ("countersigned", "unwitnessed"):
            return "countersigned" if status == "countersigned" else "unwitnessed"
        try:
            decode_countersigned_receipt((self.submitted / f"{rid}.cbor").read_bytes())
        except (InfernetError, OSError):
            return "unwitnessed"
        return "countersigned"

    def scan(self, since: float = 0.0) -> Iterator[StoredReceipt]:
        """Every readable receipt whose file was written at or after ``since``."""
        for status, directory in (("pending", self.pending), ("submitted", self.submitted),
                                  ("rejected", self.rejected)):
            for rid in self.ids(directory):
                try:
                    if (directory / f"{rid}.cbor").stat().st_mtime < since:
                        continue
                except FileNotFoundError:
                    continue
                kind: ReceiptStatus = (self.submitted_status(rid) if status == "submitted"
                                       else "pending" if status == "pending" else "rejected")
                stored = self.load(rid, kind)
                if stored is not None:
                    yield stored

    def statistics(self) -> ReceiptStatistics:
        """Counts per state and the operator share of countersigned receipts (reads them all)."""
        counts: dict[str, int] = {"countersigned": 0, "unwitnessed": 0}
        earned: dict[str, Decimal] = {}
        for rid in self.ids(self.submitted):
            status = self.submitted_status(rid)
            counts[status] = counts.get(status, 0) + 1
            if status == "countersigned":
                receipt = self._body(self.submitted / f"{rid}.cbor")
                if receipt is not None:  # files this node wrote: no signature check here
                    earned[receipt.chain] = (earned.get(receipt.chain, Decimal(0))
                                             + split_fee(receipt.value).operator)
        return ReceiptStatistics(pending=self.pending_count(),
                                 countersigned=counts["countersigned"],
                                 unwitnessed=counts["unwitnessed"],
                                 rejected=len(self.ids(self.rejected)), earned=earned)


class ReceiptQueue:
    """The daemon's receipt path: `add_nowait` from the job executor, `serve` writes them,
    the submitter reads and moves them through `pending`, `submitted` and `rejected`."""

    def __init__(self, store: ReceiptStore, *, capacity: int = QUEUE_SIZE) -> None:
        self.store = store
        # (receipt id, envelope): the id is hashed here rather than decoded back on the writer
        self._tx, self._rx = trio.open_memory_channel[tuple[str, bytes]](capacity)
        self._new = trio.Event()
        self._stats = ReceiptStatistics()
        self._dropped = 0

    def add_nowait(self, signed: SignedReceipt) -> None:
        """Queue a freshly signed receipt for disk (the executor's ``on_receipt``). Never
        blocks or raises: a full queue drops the receipt with a warning."""
        try:
            self._tx.send_nowait((receipt_id(signed.body), encode_receipt(signed)))
        except (trio.WouldBlock, trio.ClosedResourceError):
            self._drop(1, "the receipt queue is full")

    def _drop(self, n: int, why: str) -> None:
        self._dropped += n
        if self._dropped == n or self._dropped % 1000 < n:  # the first, then every 1000th
            log.warning("receipt not stored (%s); %d dropped since start", why, self._dropped)

    async def wait_new(self) -> None:
        """Wait until receipts were written since the last call. Cancel-safe."""
        await self._new.wait()
        self._new = trio.Event()

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Write queued receipts until cancelled, then flush what is left (bounded).

        Raises:
            OSError: the receipts directory cannot be created or read.
        """
        await trio.to_thread.run_sync(self.store.ensure_dirs)
        self._stats = await trio.to_thread.run_sync(self.store.statistics)
        if self._stats.pending:
            self._new.set()  # left over from the last run: the submitter starts with them
        task_status.started()
        batch: list[tuple[str, bytes]] = []
        try:
            async for first in self._rx:
                batch = [first, *self._drain()]
                await self._write(batch)
                batch = []
        finally:
            # A batch cancelled on its way to disk is written again (the same file: harmless).
            with trio.CancelScope(shield=True), trio.move_on_after(FLUSH_TIMEOUT):
                left = batch + self._drain()
                while left:
                    await self._write(left)
                    left = self._drain()

    def _drain(self) -> list[tuple[str, bytes]]:
        out: list[tuple[str, bytes]] = []
        while len(out) < WRITE_BATCH:
            try:
                out.append(self._rx.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        return out

    async def _write(self, batch: list[tuple[str, bytes]]) -> None:
        try:
            stored = await trio.to_thread.run_sync(self.store.write_pending,
                                                   [envelope for _, envelope in batch],
                                                   [rid for rid, _ in batch])
        except (OSError, InfernetError) as exc:
            self._drop(len(batch), f"cannot write {self.store.pending}: {exc}")
            return
        if stored < len(batch):
            self._drop(len(batch) - stored, f"{self.store.pending} holds "
                       f"{self.store.max_pending} receipts already")
        if stored:
            self._update(pending=self.store.pending_count())
            self._new.set()

    def _update(self, **changes: Any) -> None:
        s = self._stats
        fields = {"pending": s.pending, "countersigned": s.countersigned,
                  "unwitnessed": s.unwitnessed, "rejected": s.rejected, "earned": s.earned}
        self._stats = ReceiptStatistics(**{**fields, **changes})

    async def pending_ids(self) -> list[str]:
        """Ids waiting for a coordinator, oldest first."""
        return await trio.to_thread.run_sync(self.store.ids, self.store.pending)

    async def read_pending(self, rid: str) -> bytes | None:
        """The node-signed envelope of a pending receipt (None: gone meanwhile)."""
        return await trio.to_thread.run_sync(self.store.read_pending, rid)

    async def mark_submitted(self, rid: str, envelope: bytes, receipt: Receipt,
                             status: ReceiptStatus, info: dict[str, Any]) -> None:
        """File a receipt the coordinator accepted (``envelope`` as it answered).

        Raises:
            OSError: the files cannot be written (the receipt stays pending).
        """
        await trio.to_thread.run_sync(self.store.mark_submitted, rid, envelope, status, info)
        s = self._stats
        if status == "countersigned":
            earned = dict(s.earned)
            earned[receipt.chain] = (earned.get(receipt.chain, Decimal(0))
                                     + split_fee(receipt.value).operator)
            self._update(pending=self.store.pending_count(),
                         countersigned=s.countersigned + 1, earned=earned)
        else:
            self._update(pending=self.store.pending_count(), unwitnessed=s.unwitnessed + 1)

    async def mark_rejected(self, rid: str, info: dict[str, Any]) -> None:
        """File a receipt the coordinator refused for good.

        Raises:
            OSError: the files cannot be written (the receipt stays pending).
        """
        await trio.to_thread.run_sync(self.store.mark_rejected, rid, info)
        self._update(pending=self.store.pending_count(), rejected=self._stats.rejected + 1)

    def statistics(self) -> ReceiptStatistics:
        """The current counts (for ``infernet status``); no I/O."""
        s = self._stats
        return ReceiptStatistics(s.pending, s.countersigned, s.unwitnessed, s.rejected,
                                 self._dropped, s.earned)
