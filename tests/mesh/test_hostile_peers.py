"""Hostile peers against a real host: floods, garbage, and the node keeps serving others."""

from __future__ import annotations

import contextlib
import logging
import resource
import secrets
from contextlib import aclosing
from typing import Any

import pytest
import trio
import trio.lowlevel
from libp2p.network.stream.exceptions import StreamError

from infernet.mesh.directory import Directory, ask_directory
from infernet.mesh.gossip import ANNOUNCE_TOPIC, AnnouncementGossip
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.jobs import JOB_PROTOCOL, open_job, serve_job_stream
from infernet.mesh.peer_table import PeerTable
from infernet.node.jobs import JobExecutor
from infernet.protocol.announce import Announcement
from infernet.protocol.directory import DIRECTORY_PROTOCOL
from infernet.protocol.errors import JobFailed
from infernet.protocol.frames import JobRequest, Message
from infernet.protocol.job_stream import JobStream
from infernet.protocol.keys import SecretKey
from tests.node.test_jobs import FakeEngine


def _key() -> bytes:
    return SecretKey.generate().even_y().secret_bytes()


def _serve(mesh: MeshHost, executor: JobExecutor) -> None:
    async def handle(stream: Any) -> None:
        await serve_job_stream(stream, executor.run)

    mesh.host.set_stream_handler(JOB_PROTOCOL, handle)


def _request(i: int, text: str = "a b c") -> JobRequest:
    return JobRequest(job_id=f"j{i}", model="m", messages=(Message(role="user", content=text),))


async def _answer(client: MeshHost, node: MeshHost, i: int) -> str:
    async with open_job(client, node.peer_id, _request(i)) as call:
        await call.accepted(5)
        async with aclosing(call.chunks()) as chunks:
            return "".join([t async for t in chunks])


async def test_a_flood_of_requests_gets_no_capacity_and_the_node_recovers() -> None:
    gate = trio.Event()
    executor = JobExecutor(FakeEngine(gate=gate), {"m"}, 1, "pk")
    outcomes: list[str] = []
    async with open_host(_key(), listen_host="127.0.0.1", port=0) as node, \
            open_host(_key(), listen_host="127.0.0.1", port=0) as attacker:
        _serve(node, executor)
        await attacker.connect(node.listen_addrs()[0])

        async def one(i: int) -> None:
            try:
                outcomes.append(await _answer(attacker, node, i))
            except JobFailed as exc:
                outcomes.append(exc.code)

        async with trio.open_nursery() as nursery:
            for i in range(50):
                nursery.start_soon(one, i)
            with trio.fail_after(10):
                while outcomes.count("no_capacity") < 49:  # noqa: ASYNC110 (counting refusals)
                    await trio.sleep(0.01)
            gate.set()  # the one accepted job may now finish
        assert sorted(outcomes) == ["a b c ", *["no_capacity"] * 49]
        assert executor.free_slots == 1
        assert await _answer(attacker, node, 99) == "a b c "


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.slow
async def test_thousands_of_garbage_job_streams_leave_memory_flat(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # pytest keeps every captured record: 10,000 warnings would be the growth we measure.
    caplog.set_level(logging.ERROR, logger="infernet.mesh.jobs")
    executor = JobExecutor(FakeEngine(), {"m"}, 4, "pk")
    async with open_host(_key(), listen_host="127.0.0.1", port=0) as node, \
            open_host(_key(), listen_host="127.0.0.1", port=0) as attacker:
        _serve(node, executor)
        await attacker.connect(node.listen_addrs()[0])

        async def garbage(n: int) -> None:
            for _ in range(n):
                stream = await attacker.new_stream(node.peer_id, JOB_PROTOCOL)
                await stream.write(secrets.token_bytes(secrets.randbelow(512) + 1))
                await stream.reset()

        await garbage(500)  # warm up allocator and caches
        before = _rss_mb()
        await garbage(10_000)
        grown = _rss_mb() - before
        assert grown < 10, f"RSS grew by {grown:.1f} MB over 10,000 garbage streams"
        assert await _answer(attacker, node, 1) == "a b c "


async def test_a_peer_flooding_garbage_gossip_is_cut_off() -> None:
    seen: list[Announcement] = []

    async def on_announcement(ann: Announcement, peer_id: str) -> None:
        seen.append(ann)

    async with open_host(_key(), listen_host="127.0.0.1", port=0) as node, \
            open_host(_key(), listen_host="127.0.0.1", port=0) as attacker, \
            trio.open_nursery() as nursery:
        gossip = AnnouncementGossip(node, on_announcement)
        await nursery.start(gossip.serve)
        await attacker.pubsub.subscribe(ANNOUNCE_TOPIC)
        await attacker.connect(node.listen_addrs()[0])
        with trio.fail_after(10):
            while node.is_connected(attacker.peer_id):
                await attacker.pubsub.publish(ANNOUNCE_TOPIC, secrets.token_bytes(200))
                await trio.lowlevel.checkpoint()
        assert gossip.dropped_peers == 1
        assert seen == []
        nursery.cancel_scope.cancel()


async def test_a_peer_that_never_reads_loses_its_stream_and_others_keep_being_served(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The job's answer (~600 KB) is more than yamux's 256 KB window. Whether the node's
    # writes stall (then yamux gives up after 5 s without a window update, before our own
    # 30 s write timeout, and the stream is reset) or the sloth's muxer keeps buffering
    # what it never reads, the node must free the slot and keep serving everyone else.
    caplog.set_level(logging.INFO, logger="infernet")
    executor = JobExecutor(FakeEngine(), {"m"}, 2, "pk")
    async with open_host(_key(), listen_host="127.0.0.1", port=0) as node, \
            open_host(_key(), listen_host="127.0.0.1", port=0) as sloth, \
            open_host(_key(), listen_host="127.0.0.1", port=0) as client:
        _serve(node, executor)
        await sloth.connect(node.listen_addrs()[0])
        await client.connect(node.listen_addrs()[0])
        stream = await sloth.new_stream(node.peer_id, JOB_PROTOCOL)
        await stream.write(JobStream("client").send(_request(0, "ab " * 200_000)))
        with trio.fail_after(10):  # the sloth's job holds one slot...
            while executor.free_slots == 2:  # noqa: ASYNC110 (polling a counter)
                await trio.sleep(0.01)
        assert await _answer(client, node, 1) == "a b c "  # ...the other slot still serves
        with trio.fail_after(20):  # and the stalled stream is given up, freeing its slot
            while executor.free_slots < 2:  # noqa: ASYNC110 (polling a counter)
                await trio.sleep(0.05)
        ends = [r.getMessage() for r in caplog.records if "job j0" in r.getMessage()
                and ("write" in r.getMessage() or "done" in r.getMessage())]
        assert len(ends) == 1, ends
        assert await _answer(client, node, 2) == "a b c "
        await stream.reset()


async def test_garbage_and_oversized_directory_queries_are_reset_and_others_answered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="infernet.mesh.directory")
    async with open_host(_key(), listen_host="127.0.0.1", port=0) as node, \
            open_host(_key(), listen_host="127.0.0.1", port=0) as attacker:
        node.host.set_stream_handler(DIRECTORY_PROTOCOL,
                                     Directory(PeerTable(), lambda: None, set).handle)
        await attacker.connect(node.listen_addrs()[0])
        for junk in (b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1", (1 << 31).to_bytes(4, "big")):
            stream = await attacker.new_stream(node.peer_id, DIRECTORY_PROTOCOL)
            await stream.write(junk)
            got = b""
            with trio.fail_after(5), contextlib.suppress(StreamError):  # reset by the node
                while chunk := await stream.read(1024):
                    got += chunk
            assert got == b""  # no answer to garbage
        assert len([r for r in caplog.records if "refused" in r.getMessage()]) == 2
        assert await ask_directory(attacker, node.peer_id, "m") == []  # still answering
