"""Scripted nodes for in-process coordinator tests: no libp2p, no engine.

`FakeNodes.open` stands in for ``partial(infernet.mesh.jobs.open_job, mesh)``: each node
(by peer id) follows a `Script` — accept or refuse, the text it sends, where it dies, and
an optional gate the test opens to let it go on. Node entries in the peer table come from
real signed announcements, so routing runs on the same data as in production.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal

import trio

from infernet.mesh.peer_table import PeerTable
from infernet.protocol.announce import (
    Capabilities,
    ModelOffer,
    build_announcement,
    parse_announcement,
)
from infernet.protocol.errors import ErrorCode, JobFailed, TransportError
from infernet.protocol.event import encode_event
from infernet.protocol.frames import Accepted, FinalFrame, JobRequest
from infernet.protocol.keys import SecretKey
from infernet.protocol.pricing import job_value, rates_for_model
from infernet.protocol.receipt import (
    Receipt,
    SignedReceipt,
    output_hash,
    prompt_hash,
    sign_receipt,
)

MODEL = "gemma3-270m"


@dataclass
class Script:
    """What a fake node does with each job."""

    refuse: ErrorCode | None = None
    texts: tuple[str, ...] = ("Paris", " is", " the capital.")
    lose_after_accept: bool = False
    lose_after_texts: int | None = None
    gate: trio.Event | None = None  # waited for before the first text
    stall_after: int | None = None  # after this many texts, never send another
    receipt: bool = True  # sign a receipt in the final frame
    receipt_extra_tokens: int = 0  # overstate output tokens in it (a cheating node)
    finish_reason: str = "stop"


@dataclass
class FakeNode:
    key: SecretKey
    peer_id: str
    script: Script
    jobs: list[JobRequest] = field(default_factory=list)
    open_now: int = 0
    cancelled: int = 0
    opened: trio.Event = field(default_factory=trio.Event)  # set at the first job
    weights_hash: str = ""

    @property
    def pubkey(self) -> str:
        return self.key.public_key.hex()


class FakeCall:
    """One job on a fake node (the `JobCallLike` protocol)."""

    def __init__(self, node: FakeNode, request: JobRequest) -> None:
        self.node = node
        self.request = request
        self.final: FinalFrame | None = None

    async def accepted(self, timeout: float) -> Accepted:
        await trio.lowlevel.checkpoint()
        script = self.node.script
        if script.refuse is not None:
            raise JobFailed(f"fake refusal: {script.refuse}", code=script.refuse)
        return Accepted(job_id=self.request.job_id, node_pubkey=self.node.pubkey,
                        model=self.request.model)

    async def chunks(self) -> AsyncIterator[str]:
        script = self.node.script
        if script.gate is not None:
            await script.gate.wait()
        if script.lose_after_accept:
            raise TransportError("fake node vanished")
        for i, text in enumerate(script.texts):
            if script.lose_after_texts is not None and i >= script.lose_after_texts:
                raise TransportError("fake node vanished mid-stream")
            if script.stall_after is not None and i >= script.stall_after:
                await trio.sleep_forever()
            await trio.lowlevel.checkpoint()
            yield text
        self.final = FinalFrame(job_id=self.request.job_id, prompt_tokens=7,
                                completion_tokens=len(script.texts),
                                finish_reason=script.finish_reason, ttft_ms=1.0,
                                tokens_per_s=42.0, receipt=self._receipt())

    def _receipt(self) -> SignedReceipt | None:
        script, req = self.node.script, self.request
        if not script.receipt:
            return None
        output = len(script.texts) + script.receipt_extra_tokens
        receipt = Receipt(
            job_id=req.job_id, node_pubkey=self.node.pubkey, model=req.model,
            weights_hash=self.node.weights_hash, input_tokens=7, output_tokens=output,
            completed_at=int(time.time()), ttft_ms=1, tokens_per_s=Decimal("42"),
            value=job_value(7, output, rates_for_model(req.model)), chain="base",
            prompt_hash=prompt_hash(req.messages), output_hash=output_hash("".join(script.texts)))
        return sign_receipt(receipt, self.node.key)


class FakeNodes:
    """A set of fake nodes, announced into a peer table."""

    def __init__(self, table: PeerTable) -> None:
        self.table = table
        self.by_peer: dict[str, FakeNode] = {}

    def add(self, script: Script | None = None, *, slots: int = 4, models: tuple[str, ...] = (
            MODEL,), weights_hash: str = "", price: float = 0.0) -> FakeNode:
        key = SecretKey.generate().even_y()
        node = FakeNode(key, f"peer-{key.public_key.hex()[:12]}", script or Script())
        node.weights_hash = weights_hash
        self.by_peer[node.peer_id] = node
        self.announce(node, slots=slots, models=models, weights_hash=weights_hash, price=price)
        return node

    def announce(self, node: FakeNode, *, slots: int = 4, models: tuple[str, ...] = (MODEL,),
                 weights_hash: str = "", price: float = 0.0, free: int | None = None,
                 draining: bool = False) -> None:
        now = int(time.time())
        caps = Capabilities(backend="fake", models=tuple(
            ModelOffer(name=m, weights_hash=weights_hash, price_per_1k_output=price)
            for m in models), slots_total=slots, slots_free=slots if free is None else free,
            draining=draining, expires_at=now + 120)
        raw = encode_event(build_announcement(caps, node.key, now))
        ann = parse_announcement(raw, now=now, sender_pubkey=node.key.public_key)
        self.table.update(ann, node.peer_id, trio.current_time(), connected=True)

    @asynccontextmanager
    async def open(self, peer_id: str, request: JobRequest) -> AsyncIterator[FakeCall]:
        node = self.by_peer.get(peer_id)
        if node is None:
            raise TransportError(f"no fake node {peer_id}")
        node.jobs.append(request)
        node.open_now += 1
        node.opened.set()
        finished = False
        try:
            call = FakeCall(node, request)
            yield call
            finished = call.final is not None
        finally:
            node.open_now -= 1
            if not finished:
                node.cancelled += 1
