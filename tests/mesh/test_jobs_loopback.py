"""The job protocol between two real libp2p hosts on loopback (in one trio process)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import pytest
import trio

from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.jobs import JOB_PROTOCOL, SendFrame, open_job, serve_job_stream
from infernet.protocol.errors import JobFailed, TransportError
from infernet.protocol.frames import (
    Accepted,
    Chunk,
    FinalFrame,
    JobErrorFrame,
    JobRequest,
    Message,
    encode_frame,
)
from infernet.protocol.keys import SecretKey


def _key() -> bytes:
    return SecretKey.generate().even_y().secret_bytes()


@asynccontextmanager
async def two_hosts() -> AsyncIterator[tuple[MeshHost, MeshHost]]:
    async with open_host(_key(), listen_host="127.0.0.1", port=0) as a, \
            open_host(_key(), listen_host="127.0.0.1", port=0) as b:
        await b.connect(a.listen_addrs()[0])
        yield a, b


def _request(job_id: str = "job-1", model: str = "m") -> JobRequest:
    return JobRequest(job_id=job_id, model=model,
                      messages=(Message(role="user", content="hello there"),))


async def echo_runner(request: JobRequest, peer: str, send: SendFrame) -> None:
    if request.model != "m":
        await send(JobErrorFrame(job_id=request.job_id, code="model_not_found", message="no"))
        return
    await send(Accepted(job_id=request.job_id, node_pubkey="ab" * 32, model=request.model))
    words = request.messages[-1].content.split()
    for word in words:
        await send(Chunk(job_id=request.job_id, text=word + " "))
    await send(FinalFrame(job_id=request.job_id, prompt_tokens=len(words),
                          completion_tokens=len(words)))


async def test_job_round_trip_between_hosts() -> None:
    async with two_hosts() as (a, b):
        a.host.set_stream_handler(JOB_PROTOCOL, lambda s: serve_job_stream(s, echo_runner))
        async with open_job(b, a.peer_id, _request()) as call:
            accepted = await call.accepted(5)
            assert accepted.model == "m"
            text = "".join([t async for t in call.chunks()])
        assert text == "hello there "
        assert call.final is not None and call.final.completion_tokens == 2


async def test_refusal_arrives_as_job_failed() -> None:
    async with two_hosts() as (a, b):
        a.host.set_stream_handler(JOB_PROTOCOL, lambda s: serve_job_stream(s, echo_runner))
        async with open_job(b, a.peer_id, _request(model="other")) as call:
            with pytest.raises(JobFailed) as exc:
                await call.accepted(5)
        assert exc.value.code == "model_not_found"


async def test_garbage_stream_is_rejected_and_the_node_keeps_serving() -> None:
    async with two_hosts() as (a, b):
        a.host.set_stream_handler(JOB_PROTOCOL, lambda s: serve_job_stream(s, echo_runner))
        # a peer that speaks garbage: a huge length prefix
        stream = await b.new_stream(a.peer_id, JOB_PROTOCOL)
        await stream.write(b"\xff\xff\xff\xff" + secrets.token_bytes(64))
        with trio.fail_after(5):
            reply = b""
            try:
                while True:
                    data = await stream.read(4096)
                    if not data:
                        break
                    reply += data
            except Exception:  # the node resets the stream after its error frame
                pass
        # the node explained itself before resetting: a protocol_error frame
        assert b"protocol_error" in reply
        # a frame that is valid msgpack but not a request is refused too
        stream2 = await b.new_stream(a.peer_id, JOB_PROTOCOL)
        await stream2.write(encode_frame(Chunk(job_id="x", text="not a request")))
        # and a well-behaved client is still served
        async with open_job(b, a.peer_id, _request("job-2")) as call:
            await call.accepted(5)
            assert "".join([t async for t in call.chunks()]) == "hello there "


async def test_node_going_silent_times_out_the_client() -> None:
    async def silent_runner(request: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=request.job_id))
        await trio.sleep_forever()  # an engine that hangs

    async with two_hosts() as (a, b):
        a.host.set_stream_handler(JOB_PROTOCOL, lambda s: serve_job_stream(s, silent_runner))
        async with open_job(b, a.peer_id, _request(), read_timeout=0.5) as call:
            await call.accepted(5)
            with pytest.raises(TransportError) as exc:
                async for _ in call.chunks():
                    pass
        assert exc.value.code == "timeout"


async def test_client_cancel_stops_the_runner() -> None:
    cancelled = trio.Event()
    streaming = trio.Event()

    async def endless_runner(request: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=request.job_id))
        try:
            while True:
                await send(Chunk(job_id=request.job_id, text="x"))
                streaming.set()
                await trio.sleep(0.01)
        except trio.Cancelled:
            cancelled.set()
            raise

    async with two_hosts() as (a, b):
        a.host.set_stream_handler(JOB_PROTOCOL, lambda s: serve_job_stream(s, endless_runner))
        async with open_job(b, a.peer_id, _request()) as call:
            await call.accepted(5)
            async with aclosing(call.chunks()) as chunks:
                async for _ in chunks:
                    break  # the client leaves early: open_job sends Cancel
        with trio.fail_after(5):
            await cancelled.wait()
        assert streaming.is_set()
