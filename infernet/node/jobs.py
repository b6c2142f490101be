"""Running one job on the node's engine: admission, token batching, usage and timing.

Owns: the `JobRunner` the mesh calls for each inbound job stream. It refuses jobs for models
the node does not serve (``model_not_found``) and jobs beyond its free slots
(``no_capacity``); otherwise it streams the engine's text back in batched chunk frames and
ends with a final frame carrying the engine's own usage and the node-signed Compute Payment
Receipt (prompt and output hashes, TTFT, tokens/s, value; ``specs/receipts.md``).

Invariants: a slot is held exactly while a job runs; the engine iteration is cancelled when
the client goes away; batching adds no latency (a frame is sent as soon as the writer is free,
with whatever text has accumulated meanwhile).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from typing import Final

import trio

from infernet.backends.base import Backend, ChatMessage, ChatRequest, TextDelta, Usage
from infernet.mesh.jobs import SendFrame
from infernet.node.relay import Relay
from infernet.protocol.e2e import ChunkSealer, E2EError, open_request, session_key
from infernet.protocol.errors import BackendError, InfernetError
from infernet.protocol.frames import (
    Accepted,
    Chunk,
    FinalFrame,
    JobErrorFrame,
    JobRequest,
)
from infernet.protocol.keys import PublicKey, SecretKey
from infernet.protocol.pricing import Chain, job_value, rates_for_model
from infernet.protocol.receipt import (
    Receipt,
    SignedReceipt,
    output_hash,
    prompt_hash,
    rate_from_float,
    sign_receipt,
)

__all__ = ["JobExecutor", "SendFrame"]

log = logging.getLogger("infernet.node.jobs")

_PENDING_DELTAS: Final = 256
_MAX_BATCH: Final = 64

_Item = TextDelta | Usage | BackendError
_End = Usage | BackendError | None


def _to_chat(request: JobRequest) -> ChatRequest:
    return ChatRequest(
        model=request.model,
        messages=tuple(ChatMessage(role=m.role, content=m.content) for m in request.messages),
        max_tokens=request.max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        stop=request.stop,
        seed=request.seed,
    )


class JobExecutor:
    """Admits jobs against the node's slots and runs them on its backend."""

    def __init__(
        self,
        backend: Backend,
        models: set[str],
        slots: int,
        node_pubkey: str,
        relay: Relay | None = None,
        *,
        key: SecretKey | None = None,
        weights: dict[str, str] | None = None,
        chain: Chain = "base",
        max_batch: int = _MAX_BATCH,
        on_receipt: Callable[[SignedReceipt], None] | None = None,
    ) -> None:
        self.backend = backend
        # Called with each receipt just before its final frame goes out; must not block
        # (infernet.node.receipt_store.ReceiptQueue.add_nowait keeps it durably).
        self.on_receipt = on_receipt
        self.models = models
        self.relay = relay
        self.key = key
        self.weights = weights or {}
        self.chain: Chain = chain
        self.max_batch = max(1, max_batch)  # deltas per chunk frame at most (1: no batching)
        self.limiter = trio.CapacityLimiter(max(slots, 1))
        self.node_pubkey = node_pubkey
        self.completed = 0
        self.failed = 0
        self.draining = False  # set by infernet.node.control: announce no free slot

    @property
    def free_slots(self) -> int:
        """Slots not held by a running job (none while the node drains)."""
        return 0 if self.draining else int(self.limiter.available_tokens)

    async def run(self, request: JobRequest, peer: str, send: SendFrame) -> None:
        """Answer ``request`` from ``peer`` by sending frames through ``send``. Cancel-safe."""
        job = request.job_id
        elsewhere = request.encrypted and request.encrypted_to != self.node_pubkey
        if request.model not in self.models or elsewhere:
            pinned = request.encrypted_to if elsewhere else ""
            if self.relay is not None and self.relay.can_route(request.model, pinned):
                await self.relay.run(request, send)
                return
        if request.model not in self.models:
            served = ", ".join(sorted(self.models)) or "nothing"
            await send(JobErrorFrame(
                job_id=job, code="model_not_found",
                message=f"this node does not serve {request.model!r} (it serves: {served})"))
            return
        sealer: ChunkSealer | None = None
        if request.encrypted:
            try:
                request, sealer = self._open(request)
            except E2EError as exc:
                log.warning("job %s from %s: sealed request refused: %s", job, peer, exc)
                await send(JobErrorFrame(job_id=job, code=exc.code, message=str(exc)))
                return
        try:
            self.limiter.acquire_on_behalf_of_nowait(job)
        except trio.WouldBlock:
            log.info("job %s from %s refused: no free slot", job, peer)
            await send(JobErrorFrame(job_id=job, code="no_capacity", message="all slots are busy"))
            return
        try:
            log.info("job %s from %s accepted (model %s%s)", job, peer, request.model,
                     ", end-to-end sealed" if sealer else "")
            await send(Accepted(job_id=job, node_pubkey=self.node_pubkey, model=request.model))
            await self._generate(request, send, sealer)
        finally:
            self.limiter.release_on_behalf_of(job)

    def _open(self, request: JobRequest) -> tuple[JobRequest, ChunkSealer]:
        """Open a request sealed to this node; return it and the sealer for its chunks.

        Raises:
            E2EError: this node has no key, or the request does not open (bad_request).
        """
        if self.key is None:
            raise E2EError("this node cannot open sealed requests")
        plain = open_request(request, recipient_key=self.key)
        client = PublicKey.from_hex(plain.client_pubkey)  # open_request checked it
        return plain, ChunkSealer(session_key(self.key, client), plain.job_id)

    async def _generate(
        self, request: JobRequest, send: SendFrame, sealer: ChunkSealer | None = None
    ) -> None:
        job = request.job_id
        start = time.perf_counter()
        first: float | None = None
        end: _End = None
        output: list[str] = []
        tx, rx = trio.open_memory_channel[_Item](_PENDING_DELTAS)
        async with trio.open_nursery() as nursery:
            # The engine is read in its own task so text keeps accumulating while a frame is
            # being written; each frame then carries everything that arrived meanwhile.
            nursery.start_soon(self._pump, _to_chat(request), tx)
            async with rx:
                async for item in rx:
                    text, end = _batch(item, rx, self.max_batch)
                    if text:
                        first = first or time.perf_counter()
                        output.append(text)
                        await send(sealer.seal(text, secrets.token_bytes(32)) if sealer
                                   else Chunk(job_id=job, text=text))
                    if end is not None:
                        break
            nursery.cancel_scope.cancel()
        if isinstance(end, BackendError):
            self.failed += 1
            log.warning("job %s: engine failed: %s", job, end)
            await send(JobErrorFrame(job_id=job, code=end.code, message=str(end)))
            return
        if end is None:
            self.failed += 1
            await send(JobErrorFrame(job_id=job, code="internal_error",
                                     message="the engine ended without reporting usage"))
            return
        done = time.perf_counter()
        ttft = ((first or done) - start) * 1000
        decode = done - (first or done)
        tps = end.completion_tokens / decode if decode > 0 else 0.0
        self.completed += 1
        log.info("job %s done: %d+%d tokens, ttft %.0f ms, %.1f tok/s", job,
                 end.prompt_tokens, end.completion_tokens, ttft, tps)
        receipt = self._receipt(request, end, "".join(output), ttft, tps)
        if receipt is not None and self.on_receipt is not None:
            self.on_receipt(receipt)
        await send(FinalFrame(job_id=job, prompt_tokens=end.prompt_tokens,
                              completion_tokens=end.completion_tokens,
                              finish_reason=end.finish_reason, ttft_ms=ttft, tokens_per_s=tps,
                              receipt=receipt))

    def _receipt(self, request: JobRequest, usage: Usage, text: str, ttft_ms: float,
                 tps: float) -> SignedReceipt | None:
        """The node-signed Compute Payment Receipt of a finished job (specs/receipts.md)."""
        if self.key is None:
            return None
        receipt = Receipt(
            job_id=request.job_id,
            node_pubkey=self.node_pubkey,
            client_pubkey=request.client_pubkey,
            model=request.model,
            weights_hash=self.weights.get(request.model, ""),
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            completed_at=int(time.time()),
            ttft_ms=round(ttft_ms),
            tokens_per_s=rate_from_float(tps),
            value=job_value(usage.prompt_tokens, usage.completion_tokens,
                            rates_for_model(request.model)),
            chain=self.chain,
            prompt_hash=prompt_hash(request.messages),
            output_hash=output_hash(text),
        )
        try:
            return sign_receipt(receipt, self.key)
        except InfernetError as exc:  # a bound the engine's output broke: job still counts
            log.warning("job %s: receipt not signed: %s", request.job_id, exc)
            return None

    async def _pump(self, chat: ChatRequest, tx: trio.MemorySendChannel[_Item]) -> None:
        async with tx:
            try:
                async for item in self.backend.stream_chat(chat):
                    # No checkpoint per item: what the engine sent in one read is queued
                    # whole, so the writer (woken by the first) sends it in one frame rather
                    # than a frame for the first item and another for the rest. The engine's
                    # reads are checkpoints, so the writer still runs before the next one.
                    try:
                        tx.send_nowait(item)
                    except trio.WouldBlock:
                        await tx.send(item)
            except BackendError as exc:
                await tx.send(exc)


def _batch(item: _Item, rx: trio.MemoryReceiveChannel[_Item], most: int) -> tuple[str, _End]:
    """Join ``item`` with every delta already queued; stop at a usage record or an error."""
    parts: list[str] = []
    while True:
        if not isinstance(item, TextDelta):
            return "".join(parts), item
        parts.append(item.text)
        if len(parts) >= most:
            return "".join(parts), None
        try:
            item = rx.receive_nowait()
        except (trio.WouldBlock, trio.EndOfChannel):
            return "".join(parts), None
