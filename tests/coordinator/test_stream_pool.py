"""The coordinator's job opener: a session per node, or a stream per job for older nodes."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from coordinator.stream_pool import StreamPool
from infernet.mesh.host import MeshHost
from infernet.mesh.job_mux import JOB_MUX_PROTOCOL, SessionPool, SessionServer
from infernet.mesh.jobs import JOB_PROTOCOL, serve_job_stream
from infernet.protocol.frames import JobRequest, Message
from tests.mesh.test_jobs_loopback import echo_runner, two_hosts


def _request(text: str) -> JobRequest:
    return JobRequest(job_id="job-" + secrets.token_hex(6), model="m",
                      messages=(Message(role="user", content=text),))


@asynccontextmanager
async def opener(*, sessions: bool) -> AsyncIterator[tuple[MeshHost, StreamPool, SessionPool]]:
    async with two_hosts() as (node, coordinator):
        node.host.set_stream_handler(JOB_PROTOCOL, lambda s: serve_job_stream(s, echo_runner))
        if sessions:
            node.host.set_stream_handler(JOB_MUX_PROTOCOL, SessionServer(echo_runner).handle)
        pool = SessionPool(coordinator)
        streams = StreamPool(coordinator, sessions=pool)
        async with trio.open_nursery() as nursery:
            await nursery.start(pool.serve)
            await nursery.start(streams.serve)
            yield node, streams, pool
            nursery.cancel_scope.cancel()


async def _chat(streams: StreamPool, peer: str, text: str) -> str:
    async with streams.open_job(peer, _request(text)) as call:
        await call.accepted(5)
        return "".join([t async for t in call.chunks()])


async def test_jobs_to_a_current_node_share_its_session_and_pre_open_nothing() -> None:
    async with opener(sessions=True) as (node, streams, pool):
        for i in range(3):
            assert await _chat(streams, node.peer_id, f"hi {i}") == f"hi {i} "
        assert pool.open_sessions() == 1
        assert streams.idle() == 0
        assert (streams.hits, streams.misses) == (0, 0)


async def test_an_older_node_gets_a_stream_per_job_and_keeps_working() -> None:
    async with opener(sessions=False) as (node, streams, pool):
        assert await _chat(streams, node.peer_id, "first") == "first "
        assert not pool.speaks(node.peer_id)
        with trio.fail_after(10):
            while not streams.idle():  # noqa: ASYNC110 (polling a counter; the refill runs in the background)
                await trio.sleep(0.01)
        assert await _chat(streams, node.peer_id, "second") == "second "
        assert pool.open_sessions() == 0
        assert streams.hits == 1
