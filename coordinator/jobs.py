"""The job lifecycle: pending → processing → completed | failed, run in the coordinator's nursery.

Owns: `JobManager`, which records each submitted job, runs it in a task of its own (so a
``stream: false`` job keeps running after its HTTP request returned), lets any number of
readers follow its text as it arrives, enforces the job timeout, moves a job to another
node when its node is lost before the first token, and sweeps the store at start.
Spec: ``specs/http-api.md`` §"Job lifecycle".

Invariants:
- Every job is in the store before any byte of its answer reaches a client, and its
  outcome is in the store before a reader sees it end (the completion is awaited).
- No job outlives its deadline (``created_at`` + `JobSettings.timeout`): the runner's
  cancel scope carries it, and `JobManager.serve` fails or re-queues, before serving, every
  job a previous process left unfinished.
- A job whose node is lost after ``accepted`` but before any text runs again on another
  node (the reader sees nothing of it but a later first token); after the first text a
  lost node ends the job with ``node_disconnected``.
- Jobs from ``/v1/chat/completions`` (source ``openai``) are cancelled when their last
  reader leaves; ``/api/v1/jobs`` jobs run to their end whoever watches.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol

import msgspec
import trio
from trio_typing import TaskStatus

from coordinator.metrics import Metrics
from coordinator.receipts import (
    JobFacts,
    ReceiptNotReady,
    ReceiptRecord,
    ReceiptRejected,
    UnwitnessedQuotaFull,
    check_and_countersign,
    rejected_record,
    unwitnessed_record,
)
from coordinator.router import ACCEPT_TIMEOUT, Router, candidates
from coordinator.store import JobRecord, Store
from coordinator.store_writer import AsyncStore, PendingWrite
from infernet.mesh.peer_table import PeerEntry
from infernet.protocol.errors import ErrorCode, InfernetError, JobFailed
from infernet.protocol.frames import Accepted, FinalFrame, JobRequest
from infernet.protocol.keys import SecretKey
from infernet.protocol.receipt import Receipt, SignedReceipt, receipt_id

__all__ = ["JobCallLike", "JobManager", "JobOpener", "JobSettings", "JobSource", "JobView",
           "LiveJob", "new_job_id"]

log = logging.getLogger("coordinator.jobs")

JobSource = Literal["openai", "jobs"]
Status = Literal["pending", "processing", "completed", "failed"]

# Codes after which another node may do better (refusals or a broken node, not the request).
_RETRY_BEFORE_ACCEPT: Final = frozenset({"no_capacity", "model_not_found", "backend_unavailable",
                                         "node_disconnected", "timeout", "protocol_error",
                                         "internal_error"})
_FATAL: Final = frozenset({"bad_request", "unauthorized", "rate_limited", "cancelled"})
MAX_NODE_LOSSES: Final = 5
EXCLUDE_FOR: Final = 5.0
DAY: Final = 86_400.0
# Unwitnessed receipts (jobs served straight over the mesh) a node may store per 24 h: they
# are never paid, so past this a node would only fill the database (429 until then).
UNWITNESSED_PER_DAY: Final = 10_000


class JobCallLike(Protocol):
    """What the manager needs from a job call (`infernet.mesh.jobs.JobCall` is one)."""

    final: FinalFrame | None

    async def accepted(self, timeout: float) -> Accepted: ...

    def chunks(self) -> AsyncIterator[str]: ...


JobOpener = Callable[[str, JobRequest], AbstractAsyncContextManager[JobCallLike]]


def new_job_id() -> str:
    """A fresh job id (``job_`` + 96 random bits)."""
    return "job_" + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class JobSettings:
    """Timing and size bounds of the job manager."""

    timeout: float = 300.0
    capacity_wait: float = 5.0
    max_live: int = 10_000
    keep_finished: int = 2_000
    unwitnessed_per_day: int = UNWITNESSED_PER_DAY


class _Stored(msgspec.Struct, kw_only=True):
    """What the store keeps of a job so it can run again after a restart."""

    request: JobRequest
    weights_hash: str = ""
    pinned: str = ""


@dataclass(frozen=True, slots=True)
class JobView:
    """A job as the API shows it, from memory or from the store."""

    id: str
    model: str
    status: str
    source: str
    created_at: float
    node_pubkey: str | None = None
    text: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    completed_at: float | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    tokens_per_s: float | None = None
    weights_hash: str | None = None
    receipt_id: str | None = None
    attempts: int = 0

    @classmethod
    def from_record(cls, r: JobRecord) -> JobView:
        return cls(id=r.id, model=r.model, status=r.status, source=r.source,
                   created_at=r.created_at, node_pubkey=r.node_pubkey, text=r.result_text,
                   finish_reason=r.finish_reason, prompt_tokens=r.prompt_tokens,
                   completion_tokens=r.completion_tokens, error_code=r.error_code,
                   error_message=r.error_message, completed_at=r.completed_at,
                   latency_ms=r.latency_ms, ttft_ms=r.ttft_ms, tokens_per_s=r.tokens_per_s,
                   weights_hash=r.weights_hash, receipt_id=r.receipt_id, attempts=r.attempts)


@dataclass(eq=False, slots=True)
class LiveJob:
    """A job this process is running or ran recently; readers follow ``parts``."""

    id: str
    token_id: str
    source: JobSource
    request: JobRequest
    created_at: float  # Unix seconds
    started: float  # trio clock at submission
    deadline: float  # trio clock
    interactive: bool
    weights_hash: str = ""
    pinned: str = ""
    status: Status = "pending"
    node_pubkey: str | None = None
    served_weights: str | None = None
    parts: list[str] = field(default_factory=list)
    final: FinalFrame | None = None
    error_code: ErrorCode | None = None
    error_message: str | None = None
    ttft_ms: float | None = None
    latency_ms: float | None = None
    completed_at: float | None = None
    attempts: int = 0
    receipt_id: str | None = None
    readers: int = 0
    created: PendingWrite | None = None
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    cancel_code: ErrorCode | None = None
    _changed: trio.Event = field(default_factory=trio.Event)
    # Set once for good, so a reader waiting for the first text or the end wakes once, not
    # at every piece of text (each wake-up is a trip through trio's scheduler).
    _output: trio.Event = field(default_factory=trio.Event)
    _end: trio.Event = field(default_factory=trio.Event)
    # Scopes to cancel at the first text or at the end: see `cancel_at`.
    _on_output: list[trio.CancelScope] = field(default_factory=list)
    _on_end: list[trio.CancelScope] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.request.model

    @property
    def ended(self) -> bool:
        return self.status in ("completed", "failed")

    def notify(self) -> None:
        event, self._changed = self._changed, trio.Event()
        event.set()
        if self.ended:
            self._end.set()
            due = self._on_output + self._on_end
            self._on_output, self._on_end = [], []
        elif self.parts:
            due, self._on_output = self._on_output, []
        else:
            return
        self._output.set()
        for scope in due:
            scope.cancel()

    def cancel_at(self, scope: trio.CancelScope, *, end: bool) -> None:
        """Cancel ``scope`` once the job has ended (``end``), or has text or ended (not
        ``end``); at once if it has already. For a task that waits on something else
        meanwhile (the HTTP layer waits for its client to go away) instead of on
        `wait_ended` or `wait_output`."""
        if self.ended or (not end and self.parts):
            scope.cancel()
        else:
            (self._on_end if end else self._on_output).append(scope)

    async def wait_persisted(self) -> None:
        """Wait until the job's record committed.

        Raises:
            sqlite3.Error: the record could not be written.
        """
        if self.created is not None:
            await self.created.wait()

    async def wait_output(self) -> None:
        """Wait until the job has text or has ended. Cancel-safe."""
        if not self.parts and not self.ended:
            await self._output.wait()

    async def wait_ended(self) -> None:
        """Wait until the job completed or failed. Cancel-safe."""
        if not self.ended:
            await self._end.wait()

    async def follow(self, start: int = 0) -> AsyncGenerator[list[str], None]:
        """Yield the job's text from piece ``start`` on, as lists of every piece that
        arrived since the last yield (one write per list downstream), until the job ends.
        Cancel-safe; use it under ``aclosing`` when it may be left early."""
        i = start
        while True:
            if i < len(self.parts):
                batch = self.parts[i:]
                i += len(batch)
                yield batch
                continue
            if self.ended:
                return
            await self._changed.wait()

    def cancel(self, code: ErrorCode) -> None:
        """Stop the job; it fails with ``code``."""
        if not self.ended and self.cancel_code is None:
            self.cancel_code = code
            self.scope.cancel()

    def view(self) -> JobView:
        final = self.final
        return JobView(
            id=self.id, model=self.model, status=self.status, source=self.source,
            created_at=self.created_at, node_pubkey=self.node_pubkey,
            text="".join(self.parts) if self.status == "completed" else None,
            finish_reason=final.finish_reason if final else None,
            prompt_tokens=final.prompt_tokens if final else None,
            completion_tokens=final.completion_tokens if final else None,
            error_code=self.error_code, error_message=self.error_message,
            completed_at=self.completed_at, latency_ms=self.latency_ms, ttft_ms=self.ttft_ms,
            tokens_per_s=final.tokens_per_s if final else None,
            weights_hash=self.served_weights, receipt_id=self.receipt_id,
            attempts=self.attempts)


class _Retry(Exception):
    """Internal: this node did not work out; try another (never escapes `_run`)."""

    def __init__(self, exclude: bool, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.exclude = exclude
        self.code = code


class JobManager:
    """Runs every job of this coordinator in its own nursery."""

    def __init__(self, store: AsyncStore, router: Router, opener: JobOpener,
                 settings: JobSettings | None = None, metrics: Metrics | None = None,
                 key: SecretKey | None = None) -> None:
        self._key = key  # countersigns receipts; None: receipts are not handled
        self.store = store
        self.router = router
        self.settings = settings or JobSettings()
        self.metrics = metrics
        self._open = opener
        self._live: dict[str, LiveJob] = {}
        self._finished: OrderedDict[str, LiveJob] = OrderedDict()
        self._nursery: trio.Nursery | None = None

    @property
    def db(self) -> Store:
        return self.store.sync

    # --- lifecycle ------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Sweep what a previous run left unfinished, then run jobs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._sweep()
            task_status.started()
            await trio.sleep_forever()

    async def _sweep(self) -> None:
        now, clock = time.time(), trio.current_time()
        requeued = failed = 0
        for rec in await self.store.read(Store.unfinished_jobs):
            stored = _decode_stored(rec.request)
            if rec.deadline is None or rec.deadline <= now:
                await self.store.write(self.db.fail_job, rec.id, "timeout",
                                       "the job timed out while the coordinator was down")
                failed += 1
            elif rec.source != "jobs" or stored is None:
                await self.store.write(
                    self.db.fail_job, rec.id, "internal_error",
                    "the coordinator restarted while this job ran; its client had gone")
                failed += 1
            else:
                await self.store.write(self.db.requeue_job, rec.id)
                job = LiveJob(id=rec.id, token_id=rec.token_id, source="jobs",
                              request=stored.request, created_at=rec.created_at,
                              started=clock - (now - rec.created_at),
                              deadline=clock + (rec.deadline - now), interactive=False,
                              weights_hash=stored.weights_hash, pinned=stored.pinned,
                              attempts=rec.attempts + 1)
                self._start(job)
                requeued += 1
        if requeued or failed:
            log.info("start-up sweep: %d unfinished jobs re-queued, %d failed", requeued, failed)

    # --- submitting and finding -----------------------------------------------------------

    def check_routable(self, model: str, *, weights_hash: str = "", pinned: str = "") -> None:
        """Refuse at once a job no online node could run.

        Raises:
            InfernetError: ``model_not_found`` or ``no_capacity`` (see `router.candidates`),
                ``no_capacity`` when too many jobs are live already.
        """
        # `candidates` raises exactly what `Router.ranked` would, without scoring every node.
        candidates(self.router.table, model, trio.current_time(), weights_hash=weights_hash,
                   pinned=pinned)
        if len(self._live) >= self.settings.max_live:
            raise InfernetError("the coordinator is at its job limit; retry shortly",
                                code="no_capacity")

    def submit(self, token_id: str, request: JobRequest, source: JobSource, *,
               interactive: bool, weights_hash: str = "", pinned: str = "") -> LiveJob:
        """Record ``request`` (the write is queued at once) and start running it.

        Await `LiveJob.wait_persisted` before telling the client about the job.
        """
        now, clock = time.time(), trio.current_time()
        job = LiveJob(id=request.job_id, token_id=token_id, source=source, request=request,
                      created_at=now, started=clock, deadline=clock + self.settings.timeout,
                      interactive=interactive, weights_hash=weights_hash, pinned=pinned)
        blob = msgspec.json.encode(_Stored(request=request, weights_hash=weights_hash,
                                           pinned=pinned)).decode()
        job.created = self.store.write_nowait(
            self.db.create_job, job.id, token_id, request.model, source=source,
            request=blob, deadline=now + self.settings.timeout, created_at=now)
        self._start(job)
        return job

    def _start(self, job: LiveJob) -> None:
        if self._nursery is None:
            raise RuntimeError("JobManager.serve is not running")
        self._live[job.id] = job
        self._nursery.start_soon(self._run, job, name=f"job {job.id}")

    def get(self, job_id: str) -> LiveJob | None:
        """A job running now or finished recently, else None (then ask the store)."""
        return self._live.get(job_id) or self._finished.get(job_id)

    async def view(self, job_id: str) -> tuple[str, JobView] | None:
        """(token id, view) of any job, from memory or the store."""
        live = self.get(job_id)
        if live is not None:
            return live.token_id, live.view()
        rec = await self.store.read(Store.get_job, job_id)
        return (rec.token_id, JobView.from_record(rec)) if rec else None

    def attach(self, job: LiveJob) -> None:
        """A reader starts following ``job``."""
        job.readers += 1

    def detach(self, job: LiveJob) -> None:
        """A reader left; the last reader of an ``openai`` job takes the job with it."""
        job.readers -= 1
        if job.readers <= 0 and job.source == "openai" and not job.ended:
            job.cancel("cancelled")

    def running(self) -> int:
        """Jobs not ended yet."""
        return len(self._live)

    # --- running ----------------------------------------------------------------------------

    async def _run(self, job: LiveJob) -> None:
        failure: InfernetError | None = None
        with job.scope:
            job.scope.deadline = job.deadline
            try:
                await self._attempts(job)
            except InfernetError as exc:
                failure = exc
            except Exception as exc:  # one job's bug (e.g. a store error) must not end the rest
                log.exception("job %s: unexpected error", job.id)
                failure = InfernetError(f"internal error: {type(exc).__name__}",
                                        code="internal_error")
        if job.ended:
            return
        if failure is None:
            code: ErrorCode = job.cancel_code or "timeout"
            message = ("the job was cancelled: its client went away" if job.cancel_code
                       else f"the job did not finish within {self.settings.timeout:.0f} s")
            failure = InfernetError(message, code=code)
        await self._fail(job, failure.code, str(failure))

    async def _attempts(self, job: LiveJob) -> None:
        excluded: dict[str, float] = {}
        losses = 0
        # An interactive job waits for a slot at most `capacity_wait` (again after a loss).
        capacity_deadline = job.started + self.settings.capacity_wait
        while True:
            now = trio.current_time()
            exclude = frozenset(p for p, until in excluded.items() if until > now)
            wait = (capacity_deadline if job.interactive
                    else min(job.deadline, now + EXCLUDE_FOR))
            try:
                entry = await self.router.acquire(job.model, wait, exclude=exclude,
                                                  weights_hash=job.weights_hash,
                                                  pinned=job.pinned)
            except InfernetError:
                if job.interactive:
                    raise
                continue  # a queued job waits for a node until its deadline
            try:
                await self._on_node(job, entry)
                return
            except _Retry as retry:
                now = trio.current_time()
                if retry.exclude:
                    excluded[entry.pubkey] = now + EXCLUDE_FOR
                if job.status == "processing":  # lost after accepted, before any text
                    losses += 1
                    if losses >= MAX_NODE_LOSSES:
                        raise InfernetError(str(retry), code=retry.code) from None
                    self._requeue(job, entry, retry)
                    capacity_deadline = now + self.settings.capacity_wait
                elif job.interactive and now >= capacity_deadline:
                    raise InfernetError(f"no node could take the job: {retry}",
                                        code="no_capacity") from None

    def _requeue(self, job: LiveJob, entry: PeerEntry, retry: _Retry) -> None:
        log.warning("job %s: node %s lost before the first token (%s: %s); re-queued",
                    job.id, entry.pubkey[:12], retry.code, retry)
        job.status, job.node_pubkey, job.served_weights = "pending", None, None
        job.attempts += 1
        self.store.write_nowait(self.db.requeue_job, job.id)
        if self.metrics:
            self.metrics.requeues.inc()
        job.notify()

    async def _on_node(self, job: LiveJob, entry: PeerEntry) -> None:
        """Run ``job`` on ``entry`` (whose slot is held) to its end.

        Raises:
            _Retry: the node refused, was unreachable or was lost before the first text.
            InfernetError: the job failed for good.
        """
        released = False

        def release(*, busy: bool = False, failed: bool = False) -> None:
            nonlocal released
            if not released:
                released = True
                self.router.release(entry.pubkey, busy=busy, failed=failed)

        try:
            async with self._open(entry.peer_id, job.request) as call:
                await self._accept(call, entry, release)
                self._processing(job, entry)
                await self._stream(job, call, release)
                release()
                final = call.final
                if final is None:  # chunks() only returns after a final frame
                    raise InfernetError("the stream ended without a final frame")
            await self._complete(job, entry, final)
        except _Retry:
            raise
        except InfernetError as exc:
            # open_job's TransportError before the request went out, or the node failed.
            if job.status == "pending" and exc.code in _RETRY_BEFORE_ACCEPT:
                release(failed=True)
                raise _Retry(True, exc.code, str(exc)) from None
            release(failed=exc.code in ("node_disconnected", "timeout", "protocol_error"))
            raise
        finally:
            release()

    async def _accept(self, call: JobCallLike, entry: PeerEntry,
                      release: Callable[..., None]) -> None:
        try:
            await call.accepted(ACCEPT_TIMEOUT)
        except JobFailed as exc:
            if exc.code in _FATAL:
                raise
            busy = exc.code == "no_capacity"
            release(busy=busy, failed=not busy)
            raise _Retry(not busy, exc.code, str(exc)) from None

    def _processing(self, job: LiveJob, entry: PeerEntry) -> None:
        job.status, job.node_pubkey = "processing", entry.pubkey
        job.served_weights = next((m.weights_hash for m in entry.announcement.caps.models
                                   if m.name == job.model and m.weights_hash), None)
        self.store.write_nowait(self.db.start_job, job.id, entry.pubkey,
                                weights_hash=job.served_weights)
        job.notify()

    async def _stream(self, job: LiveJob, call: JobCallLike,
                      release: Callable[..., None]) -> None:
        try:
            async for text in call.chunks():
                if not job.parts:
                    job.ttft_ms = (trio.current_time() - job.started) * 1000
                job.parts.append(text)
                job.notify()
        except InfernetError as exc:
            if not job.parts and exc.code not in _FATAL:
                release(failed=True)
                raise _Retry(True, exc.code, str(exc)) from None
            raise

    async def _complete(self, job: LiveJob, entry: PeerEntry, final: FinalFrame) -> None:
        latency = (trio.current_time() - job.started) * 1000
        if job.ttft_ms is None:
            job.ttft_ms = latency
        text = "".join(job.parts)
        facts = JobFacts.of_run(job.request, entry.pubkey, job.served_weights, final, text)
        job.receipt_id = self._countersign(job, final, facts)
        await self.store.write(
            self.db.finish_job, job.id, final.prompt_tokens, final.completion_tokens, text=text,
            finish_reason=final.finish_reason, ttft_ms=job.ttft_ms, latency_ms=latency,
            tokens_per_s=final.tokens_per_s, receipt_id=job.receipt_id,
            prompt_hash=facts.prompt_hash)
        job.final, job.latency_ms, job.completed_at = final, latency, time.time()
        job.status = "completed"
        self.router.record(entry.pubkey, job.model, final.ttft_ms or job.ttft_ms,
                           final.tokens_per_s)
        self._ended(job, "completed", final.prompt_tokens, final.completion_tokens)

    def _countersign(self, job: LiveJob, final: FinalFrame, facts: JobFacts) -> str | None:
        """Check and countersign the node's receipt; queue it for the store (in the same
        commit as the job's completion). Returns the id of a countersigned receipt."""
        signed = final.receipt
        if signed is None or self._key is None:
            return None
        now = time.time()
        try:
            record = check_and_countersign(signed, facts, key=self._key, now=now)
        except ReceiptRejected as exc:
            log.warning("job %s: receipt from node %s rejected: %s", job.id,
                        facts.node_pubkey[:12], exc)
            record = rejected_record(signed, str(exc), facts, now)
        self.store.write_nowait(self.db.save_receipt, record)
        return record.id if record.status == "countersigned" else None

    async def accept_late_receipt(self, signed: SignedReceipt,
                                  stated: Receipt) -> tuple[ReceiptRecord, bool]:
        """Check a receipt a node sends after its job against the stored job, countersign and
        store it. Returns (record, newly stored).

        A receipt for a job this coordinator never routed (the node served it over the mesh)
        is stored ``unwitnessed``: signature and value checked, never countersigned or paid.

        Raises:
            ReceiptNotReady: the job is still running here (the node should retry).
            UnwitnessedQuotaFull: an unwitnessed receipt past the node's daily quota
                (``settings.unwitnessed_per_day``; the node should retry later).
            InfernetError: ``bad_request`` — the job ended otherwise or on another node, it
                already has another receipt, or the receipt does not match (then it is
                stored as rejected) or does not verify.
        """
        live = self.get(stated.job_id)
        if live is not None and live.status in ("pending", "processing"):
            raise ReceiptNotReady(f"job {stated.job_id!r} has not ended yet; send the "
                                  "receipt again later")
        rec = await self.store.read(Store.get_job, stated.job_id)
        if rec is None and live is None:
            return await self._unwitnessed(signed)
        if rec is None or rec.status != "completed" or rec.node_pubkey != stated.node_pubkey:
            raise InfernetError(f"no completed job {stated.job_id!r} served by this node",
                                code="bad_request")
        existing = await self.store.read(Store.receipt_for_job, rec.id)
        if existing is not None:
            if existing.id == receipt_id(signed.body):
                return existing, False
            raise InfernetError("this job already has a countersigned receipt",
                                code="bad_request")
        if self._key is None:
            raise InfernetError("this coordinator does not countersign receipts",
                                code="bad_request")
        facts = JobFacts(
            job_id=rec.id, node_pubkey=stated.node_pubkey, model=rec.model,
            input_tokens=rec.prompt_tokens or 0, output_tokens=rec.completion_tokens or 0,
            weights_hash=rec.weights_hash,
            prompt_hash=await self.store.read(Store.job_prompt_hash, rec.id),
            output_hash=JobFacts.of_text(rec.result_text or ""))
        now = time.time()
        try:
            record = check_and_countersign(signed, facts, key=self._key, now=now)
        except ReceiptRejected as exc:
            await self.store.write(self.db.save_receipt,
                                   rejected_record(signed, str(exc), facts, now))
            raise InfernetError(f"receipt rejected: {exc}", code="bad_request") from None
        await self.store.write(self.db.save_receipt, record)
        await self.store.write(self.db.set_job_receipt, rec.id, record.id)
        live = self.get(rec.id)
        if live is not None:
            live.receipt_id = record.id
        log.info("job %s: late receipt %s from node %s countersigned", rec.id, record.id[:12],
                 stated.node_pubkey[:12])
        return record, True

    async def _unwitnessed(self, signed: SignedReceipt) -> tuple[ReceiptRecord, bool]:
        """Store a receipt for a job this coordinator did not route (never paid)."""
        existing = await self.store.read(Store.get_receipt, receipt_id(signed.body))
        if existing is not None:
            if existing.status != "unwitnessed":
                raise InfernetError(f"receipt already stored as {existing.status}",
                                    code="bad_request")
            return existing, False
        now = time.time()
        try:
            record = unwitnessed_record(signed, now)
        except ReceiptRejected as exc:
            raise InfernetError(f"receipt rejected: {exc}", code="bad_request") from None
        count, oldest = await self.store.read(Store.unwitnessed_since, record.node_pubkey,
                                              now - DAY)
        limit = self.settings.unwitnessed_per_day
        if count >= limit:
            retry_after = max(1, math.ceil((oldest or now) + DAY - now))
            log.warning("node %s: unwitnessed receipt %s refused: %d stored in 24 h (limit %d)",
                        record.node_pubkey[:12], record.id[:12], count, limit)
            raise UnwitnessedQuotaFull(
                f"this node stored {count} unwitnessed receipts in the last 24 h (limit "
                f"{limit}); send the rest later", retry_after=retry_after)
        await self.store.write(self.db.save_receipt, record)
        log.info("job %s: receipt %s from node %s stored unwitnessed (not routed here)",
                 record.job_id, record.id[:12], record.node_pubkey[:12])
        return record, True

    async def _fail(self, job: LiveJob, code: ErrorCode, message: str) -> None:
        latency = (trio.current_time() - job.started) * 1000
        try:
            await self.store.write(self.db.fail_job, job.id, code, message, latency_ms=latency)
        except Exception:  # the job still ends for its readers; the sweep retries
            log.exception("job %s: recording its failure failed", job.id)
        job.status, job.error_code, job.error_message = "failed", code, message
        job.latency_ms, job.completed_at = latency, time.time()
        self._ended(job, code)

    def _ended(self, job: LiveJob, outcome: str, prompt: int = 0, completion: int = 0) -> None:
        self._live.pop(job.id, None)
        self._finished[job.id] = job
        while len(self._finished) > self.settings.keep_finished:
            self._finished.popitem(last=False)
        job.notify()
        latency_ms = job.latency_ms or 0.0
        log.info("job %s %s node=%s model=%s tokens=%d+%d ttft_ms=%s latency_ms=%.1f"
                 " attempts=%d", job.id, outcome, (job.node_pubkey or "-")[:16], job.model,
                 prompt, completion, f"{job.ttft_ms:.1f}" if job.ttft_ms is not None else "-",
                 latency_ms, job.attempts + 1)
        if self.metrics:
            self.metrics.job_ended(job.model, outcome, latency_ms / 1000,
                                   job.ttft_ms / 1000 if job.ttft_ms is not None else None,
                                   prompt, completion)


def _decode_stored(blob: str | None) -> _Stored | None:
    if not blob:
        return None
    try:
        return msgspec.json.decode(blob, type=_Stored)
    except (msgspec.DecodeError, msgspec.ValidationError):
        log.warning("a stored job request does not decode; the job cannot run again")
        return None
