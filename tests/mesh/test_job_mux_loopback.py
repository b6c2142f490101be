"""Job sessions (`/infernet/job-mux/1.0.0`) between two real libp2p hosts on loopback."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from infernet.mesh.host import MeshHost, ProtocolNotOffered
from infernet.mesh.job_mux import JOB_MUX_PROTOCOL, SessionPool, SessionServer
from infernet.mesh.jobs import JOB_PROTOCOL, SendFrame, serve_job_stream
from infernet.protocol.errors import JobFailed, TransportError
from infernet.protocol.frames import (
    Accepted,
    Chunk,
    FinalFrame,
    JobRequest,
    Message,
    encode_frame,
)
from tests.mesh.test_jobs_loopback import echo_runner, two_hosts


def _request(text: str = "hello there", model: str = "m") -> JobRequest:
    return JobRequest(job_id="job-" + secrets.token_hex(6), model=model,
                      messages=(Message(role="user", content=text),))


@asynccontextmanager
async def session_pair(
    runner: object = echo_runner, **server: int
) -> AsyncIterator[tuple[MeshHost, MeshHost, SessionPool, SessionServer]]:
    async with two_hosts() as (node, client):
        handler = SessionServer(runner, **server)  # type: ignore[arg-type]
        node.host.set_stream_handler(JOB_MUX_PROTOCOL, handler.handle)
        pool = SessionPool(client)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.serve)
            yield node, client, pool, handler
            nursery.cancel_scope.cancel()


async def _chat(pool: SessionPool, peer: str, text: str) -> str:
    async with pool.open_job(peer, _request(text)) as call:
        await call.accepted(5)
        out = "".join([t async for t in call.chunks()])
        assert call.final is not None
        return out


async def test_many_concurrent_jobs_share_one_session_and_each_gets_its_own_text() -> None:
    async with session_pair() as (node, _client, pool, handler):
        results: dict[int, str] = {}

        async def one(i: int) -> None:
            results[i] = await _chat(pool, node.peer_id, f"job {i} says hi")

        async with trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(one, i)
        assert results == {i: f"job {i} says hi " for i in range(40)}
        assert pool.open_sessions() == 1
        assert handler.sessions == 1


async def test_a_refusal_arrives_as_job_failed_and_the_session_stays_usable() -> None:
    async with session_pair() as (node, _client, pool, _handler):
        async with pool.open_job(node.peer_id, _request(model="other")) as call:
            with pytest.raises(JobFailed) as exc:
                await call.accepted(5)
        assert exc.value.code == "model_not_found"
        assert await _chat(pool, node.peer_id, "still here") == "still here "


async def test_leaving_a_job_early_cancels_it_on_the_node() -> None:
    started, cancelled = trio.Event(), trio.Event()

    async def slow(request: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=request.job_id))
        if request.model == "slow":
            started.set()
            try:
                await trio.sleep_forever()
            finally:
                cancelled.set()
        await send(FinalFrame(job_id=request.job_id, prompt_tokens=1, completion_tokens=0))

    async with session_pair(slow) as (node, _client, pool, _handler):
        with trio.fail_after(10):
            async with pool.open_job(node.peer_id, _request(model="slow")) as call:
                await call.accepted(5)
                await started.wait()
            await cancelled.wait()
            # the other jobs on the session are unaffected
            async with pool.open_job(node.peer_id, _request()) as call:
                await call.accepted(5)
                assert [t async for t in call.chunks()] == []


async def test_jobs_beyond_the_session_limit_are_refused_no_capacity() -> None:
    release = trio.Event()

    async def held(request: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=request.job_id))
        await release.wait()
        await send(FinalFrame(job_id=request.job_id, prompt_tokens=1, completion_tokens=0))

    async with session_pair(held, max_jobs=2) as (node, _client, pool, _handler):
        accepted = 0
        codes: list[str] = []

        async def one(ready: trio.Event) -> None:
            nonlocal accepted
            async with pool.open_job(node.peer_id, _request()) as call:
                try:
                    await call.accepted(5)
                    accepted += 1
                    ready.set()
                    [_ async for _ in call.chunks()]
                except JobFailed as exc:
                    codes.append(exc.code)
                    ready.set()

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(3):
                    ready = trio.Event()
                    nursery.start_soon(one, ready)
                    await ready.wait()
                release.set()
        assert (accepted, codes) == (2, ["no_capacity"])


async def test_a_runner_that_crashes_fails_its_job_only() -> None:
    async def crashy(request: JobRequest, peer: str, send: SendFrame) -> None:
        if request.model == "crash":
            raise RuntimeError("bug")
        await echo_runner(request, peer, send)

    async with session_pair(crashy) as (node, _client, pool, _handler):
        async with pool.open_job(node.peer_id, _request(model="crash")) as call:
            with pytest.raises(JobFailed) as exc:
                await call.accepted(5)
        assert exc.value.code == "internal_error"
        assert await _chat(pool, node.peer_id, "fine") == "fine "


async def test_a_node_that_goes_away_fails_open_jobs_and_a_new_session_follows() -> None:
    async def held(request: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=request.job_id))
        await trio.sleep_forever()

    async with session_pair(held) as (node, client, pool, _handler):
        with trio.fail_after(15):
            async with pool.open_job(node.peer_id, _request()) as call:
                await call.accepted(5)
                for conn in list(client.host.get_network().get_connections(
                        node.host.get_id())):
                    await conn.close()
                with pytest.raises(TransportError) as exc:
                    [_ async for _ in call.chunks()]
            assert exc.value.code == "node_disconnected"
            await client.connect(node.listen_addrs()[0])
            node.host.set_stream_handler(JOB_MUX_PROTOCOL, SessionServer(echo_runner).handle)
            assert await _chat(pool, node.peer_id, "again") == "again "


async def _until_ended_by_node(stream: object) -> None:
    """Read until the node ends the stream (a reset, or EOF); hangs if it never does."""
    try:
        while await stream.read(1024):  # type: ignore[attr-defined]
            pass
    except Exception as exc:  # StreamReset: what a node does to a session it stopped trusting
        assert "Reset" in type(exc).__name__ or "EOF" in type(exc).__name__, exc


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff" + b"x" * 16,  # a length prefix far over the limit
    encode_frame(Chunk(job_id="ghost", text="x")),  # a node's frame, from the client
])
async def test_garbage_on_a_session_ends_only_that_session(garbage: bytes) -> None:
    async with session_pair() as (node, client, pool, _handler):
        assert await _chat(pool, node.peer_id, "first") == "first "
        stream = await client.new_stream(node.peer_id, JOB_MUX_PROTOCOL)
        await stream.write(garbage)
        with trio.fail_after(10):
            await _until_ended_by_node(stream)
            assert await _chat(pool, node.peer_id, "unharmed") == "unharmed "
        assert pool.open_sessions() == 1


async def test_an_older_node_without_sessions_is_reported_so_callers_fall_back() -> None:
    async with two_hosts() as (node, client):
        node.host.set_stream_handler(JOB_PROTOCOL, lambda s: serve_job_stream(s, echo_runner))
        pool = SessionPool(client)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.serve)
            with pytest.raises(ProtocolNotOffered):
                async with pool.open_job(node.peer_id, _request()):
                    pass
            assert not pool.speaks(node.peer_id)
            pool.drop(node.peer_id)  # its connection closed: it may have been upgraded
            assert pool.speaks(node.peer_id)
            nursery.cancel_scope.cancel()


async def test_the_node_answers_error_frames_for_an_ended_runner_without_result() -> None:
    async def silent(request: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=request.job_id))

    async with session_pair(silent) as (node, _client, pool, _handler):
        async with pool.open_job(node.peer_id, _request()) as call:
            await call.accepted(5)
            with pytest.raises(JobFailed) as exc:
                [_ async for _ in call.chunks()]
        assert exc.value.code == "internal_error"


async def test_a_full_job_inbox_holds_the_reader_until_the_job_reads_or_ends() -> None:
    from infernet.mesh.job_mux import INBOX_FRAMES, _Inbox

    inbox = _Inbox()
    frames = [Chunk(job_id="a", text=str(i)) for i in range(INBOX_FRAMES + 1)]
    assert all(inbox.put(f) for f in frames[:INBOX_FRAMES])
    assert not inbox.put(frames[-1])  # full: the session's reader must wait
    async with trio.open_nursery() as nursery:
        held = trio.Event()

        async def reader() -> None:
            while not inbox.put(frames[-1]):
                await inbox.room()
            held.set()

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        assert not held.is_set()
        assert await inbox.get(1) == frames[0]  # the job reads: room for one more
        with trio.fail_after(5):
            await held.wait()
    got = [await inbox.get(1) for _ in range(INBOX_FRAMES)]
    assert got == frames[1:]
    inbox.fail(TransportError("gone"))
    assert inbox.put(frames[0])  # after the job ended, frames are dropped, never waited on
    with pytest.raises(TransportError):
        await inbox.get(1)
    with pytest.raises(TransportError) as exc:
        await _Inbox().get(0.01)
    assert exc.value.code == "timeout"
