"""JobExecutor with a fake engine: admission, batching, usage and engine failures."""

from __future__ import annotations

from collections.abc import AsyncIterator

import trio
import trio.testing

from infernet.backends.base import ChatRequest, ModelInfo, StreamItem, TextDelta, Usage
from infernet.node.jobs import JobExecutor
from infernet.protocol.errors import BackendError
from infernet.protocol.frames import (
    Accepted,
    Chunk,
    FinalFrame,
    Frame,
    JobErrorFrame,
    JobRequest,
    Message,
)
from infernet.protocol.keys import SecretKey
from infernet.protocol.pricing import job_value, rates_for_model
from infernet.protocol.receipt import output_hash, prompt_hash, verify_receipt


class FakeEngine:
    """Yields the words of the last message; can fail after N words or wait on a gate."""

    name = "fake"

    def __init__(self, fail_after: int | None = None, gate: trio.Event | None = None) -> None:
        self.fail_after = fail_after
        self.gate = gate

    async def health(self) -> bool:
        return True

    async def list_models(self) -> list[ModelInfo]:
        return [ModelInfo(name="m")]

    async def stream_chat(self, request: ChatRequest) -> AsyncIterator[StreamItem]:
        words = request.messages[-1].content.split()
        for i, word in enumerate(words):
            if self.gate is not None:
                await self.gate.wait()
            if self.fail_after is not None and i == self.fail_after:
                raise BackendError("engine died", code="node_disconnected")
            yield TextDelta(text=word + " ")
        yield Usage(prompt_tokens=7, completion_tokens=len(words))


def _request(text: str = "a b c", model: str = "m", job_id: str = "j1") -> JobRequest:
    return JobRequest(job_id=job_id, model=model, messages=(Message(role="user", content=text),))


async def _run(executor: JobExecutor, request: JobRequest) -> list[Frame]:
    frames: list[Frame] = []

    async def send(frame: Frame) -> None:
        frames.append(frame)

    await executor.run(request, "peer", send)
    return frames


async def test_a_job_streams_text_then_usage() -> None:
    frames = await _run(JobExecutor(FakeEngine(), {"m"}, 1, "pk"), _request("one two three"))
    assert isinstance(frames[0], Accepted) and frames[0].node_pubkey == "pk"
    assert "".join(f.text for f in frames if isinstance(f, Chunk)) == "one two three "
    final = frames[-1]
    assert isinstance(final, FinalFrame)
    assert (final.prompt_tokens, final.completion_tokens) == (7, 3)


async def test_text_queued_while_a_frame_is_written_goes_out_in_one_chunk() -> None:
    executor = JobExecutor(FakeEngine(), {"m"}, 1, "pk")
    frames: list[Frame] = []
    release = trio.Event()

    async def slow_send(frame: Frame) -> None:
        frames.append(frame)
        if isinstance(frame, Chunk) and len(frames) == 2:
            await release.wait()  # the writer is busy: the engine keeps producing

    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.run, _request(" ".join("w" * 50)), "peer", slow_send)
        await trio.testing.wait_all_tasks_blocked()
        release.set()
    chunks = [f for f in frames if isinstance(f, Chunk)]
    assert "".join(c.text for c in chunks) == "w " * 50
    assert len(chunks) < 50  # batched, not one frame per token


async def test_text_the_engine_hands_over_at_once_goes_out_in_one_chunk() -> None:
    # FakeEngine yields without a checkpoint, like deltas parsed from one network read.
    frames = await _run(JobExecutor(FakeEngine(), {"m"}, 1, "pk"), _request("one two three"))
    assert [f.text for f in frames if isinstance(f, Chunk)] == ["one two three "]


async def test_unknown_model_and_full_slots_are_refused() -> None:
    gate = trio.Event()
    executor = JobExecutor(FakeEngine(gate=gate), {"m"}, 1, "pk")
    frames = await _run(executor, _request(model="other"))
    assert isinstance(frames[0], JobErrorFrame) and frames[0].code == "model_not_found"

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_run, executor, _request(job_id="busy"))
        await trio.testing.wait_all_tasks_blocked()
        assert executor.free_slots == 0
        refused = await _run(executor, _request(job_id="second"))
        assert isinstance(refused[0], JobErrorFrame) and refused[0].code == "no_capacity"
        gate.set()
    assert executor.free_slots == 1


async def test_engine_death_mid_stream_becomes_an_error_frame_and_frees_the_slot() -> None:
    executor = JobExecutor(FakeEngine(fail_after=2), {"m"}, 1, "pk")
    frames = await _run(executor, _request("a b c d"))
    assert "".join(f.text for f in frames if isinstance(f, Chunk)) == "a b "
    assert isinstance(frames[-1], JobErrorFrame) and frames[-1].code == "node_disconnected"
    assert executor.free_slots == 1 and executor.failed == 1


async def test_the_final_frame_carries_a_receipt_that_verifies_offline() -> None:
    key = SecretKey.generate().even_y()
    executor = JobExecutor(FakeEngine(), {"m-7b"}, 1, key.public_key.hex(), key=key,
                           weights={"m-7b": "sha256:" + "ab" * 32})
    request = JobRequest(job_id="j9", model="m-7b", client_pubkey="cd" * 32,
                         messages=(Message(role="user", content="one two"),))
    frames = await _run(executor, request)
    final = frames[-1]
    assert isinstance(final, FinalFrame) and final.receipt is not None
    verified = verify_receipt(final.receipt)
    receipt = verified.receipt
    assert verified.node.hex() == key.public_key.hex()
    assert (receipt.job_id, receipt.model, receipt.client_pubkey) == ("j9", "m-7b", "cd" * 32)
    assert (receipt.input_tokens, receipt.output_tokens) == (7, 2)
    assert receipt.weights_hash == "sha256:" + "ab" * 32
    assert receipt.output_hash == output_hash("one two ")
    assert receipt.prompt_hash == prompt_hash(request.messages)
    assert receipt.value == job_value(7, 2, rates_for_model("m-7b")) and receipt.value > 0
