"""A node relays a job for a model it lacks to a peer that announces it (real hosts, loopback)."""

from __future__ import annotations

import time
from contextlib import aclosing
from typing import Any

import pytest
import trio

from infernet.mesh.gossip import AnnouncementGossip
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.jobs import JOB_PROTOCOL, SendFrame, open_job, serve_job_stream
from infernet.mesh.peer_table import PeerTable
from infernet.node.jobs import JobExecutor
from infernet.node.relay import Relay
from infernet.protocol.announce import Announcement, Capabilities, ModelOffer, build_announcement
from infernet.protocol.errors import JobFailed, TransportError
from infernet.protocol.event import encode_event
from infernet.protocol.frames import Accepted, JobErrorFrame, JobRequest, Message
from infernet.protocol.keys import SecretKey
from tests.node.test_jobs import FakeEngine


def _announce(key: SecretKey, models: list[str], slots: int = 1) -> bytes:
    now = int(time.time())
    caps = Capabilities(backend="fake", models=tuple(ModelOffer(name=m) for m in models),
                        slots_total=slots, slots_free=slots, expires_at=now + 60)
    return encode_event(build_announcement(caps, key, now))


def _serve(mesh: MeshHost, executor: JobExecutor) -> None:
    async def handle(stream: Any) -> None:
        await serve_job_stream(stream, executor.run)

    mesh.host.set_stream_handler(JOB_PROTOCOL, handle)


async def test_job_for_a_missing_model_is_relayed_to_the_peer_that_serves_it() -> None:
    key_a, key_b, key_c = (SecretKey.generate().even_y() for _ in range(3))
    async with open_host(key_a.secret_bytes(), listen_host="127.0.0.1", port=0) as a, \
            open_host(key_b.secret_bytes(), listen_host="127.0.0.1", port=0) as b, \
            open_host(key_c.secret_bytes(), listen_host="127.0.0.1", port=0) as c, \
            trio.open_nursery() as nursery:
        table = PeerTable()

        async def on_announcement(ann: Announcement, peer_id: str) -> None:
            table.update(ann, peer_id, trio.current_time(), connected=a.is_connected(peer_id))

        async def ignore(ann: Announcement, peer_id: str) -> None:
            return None

        relay = Relay(a, table, key_a.public_key.hex())
        _serve(a, JobExecutor(FakeEngine(), set(), 1, key_a.public_key.hex(), relay=relay))
        _serve(b, JobExecutor(FakeEngine(), {"m"}, 1, key_b.public_key.hex()))
        await nursery.start(AnnouncementGossip(a, on_announcement).serve)
        gossip_b = AnnouncementGossip(b, ignore)
        await nursery.start(gossip_b.serve)
        await b.connect(a.listen_addrs()[0])
        with trio.fail_after(10):
            while table.get(key_b.public_key.hex()) is None:
                await gossip_b.publish(_announce(key_b, ["m"]))
                await trio.sleep(0.1)

        await c.connect(a.listen_addrs()[0])
        request = JobRequest(job_id="r1", model="m",
                             messages=(Message(role="user", content="relayed words here"),))
        async with open_job(c, a.peer_id, request) as call:
            accepted = await call.accepted(5)
            async with aclosing(call.chunks()) as chunks:
                text = "".join([t async for t in chunks])
        assert accepted.node_pubkey == key_b.public_key.hex()  # provenance: B served it
        assert text == "relayed words here "
        assert call.final is not None and call.final.completion_tokens == 3
        assert relay.relayed == 1

        # a model nobody announces is refused by A, naming what A serves
        unknown = JobRequest(job_id="r2", model="nope",
                             messages=(Message(role="user", content="x"),))
        async with open_job(c, a.peer_id, unknown) as call:
            with pytest.raises(JobFailed) as exc:
                await call.accepted(5)
        assert exc.value.code == "model_not_found"
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("how", ["reset", "error-frame"])
async def test_a_relay_replaces_a_node_lost_before_its_first_token(how: str) -> None:
    key_a, key_bad, key_good, key_c = (SecretKey.generate().even_y() for _ in range(4))
    opened: list[Any] = []

    async def accept_then_die(request: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=request.job_id, node_pubkey=key_bad.public_key.hex()))
        if how == "error-frame":  # its engine died: the node says so before any token
            await send(JobErrorFrame(job_id=request.job_id, code="backend_unavailable",
                                     message="engine died"))
            return
        raise TransportError("engine host vanished")  # the stream is reset, no token sent

    async with open_host(key_a.secret_bytes(), listen_host="127.0.0.1", port=0) as a, \
            open_host(key_bad.secret_bytes(), listen_host="127.0.0.1", port=0) as bad, \
            open_host(key_good.secret_bytes(), listen_host="127.0.0.1", port=0) as good, \
            open_host(key_c.secret_bytes(), listen_host="127.0.0.1", port=0) as c, \
            trio.open_nursery() as nursery:
        table = PeerTable()

        async def on_announcement(ann: Announcement, peer_id: str) -> None:
            table.update(ann, peer_id, trio.current_time(), connected=a.is_connected(peer_id))

        async def ignore(ann: Announcement, peer_id: str) -> None:
            return None

        relay = Relay(a, table, key_a.public_key.hex())
        _serve(a, JobExecutor(FakeEngine(), set(), 1, key_a.public_key.hex(), relay=relay))

        async def bad_handler(stream: Any) -> None:
            opened.append(stream)
            await serve_job_stream(stream, accept_then_die)

        bad.host.set_stream_handler(JOB_PROTOCOL, bad_handler)
        _serve(good, JobExecutor(FakeEngine(), {"m"}, 1, key_good.public_key.hex()))
        await nursery.start(AnnouncementGossip(a, on_announcement).serve)
        # the bad node advertises more free slots, so it is tried first
        for mesh, key, slots in ((bad, key_bad, 5), (good, key_good, 1)):
            gossip = AnnouncementGossip(mesh, ignore)
            await nursery.start(gossip.serve)
            await mesh.connect(a.listen_addrs()[0])
            with trio.fail_after(10):
                while table.get(key.public_key.hex()) is None:
                    await gossip.publish(_announce(key, ["m"], slots))
                    await trio.sleep(0.1)

        await c.connect(a.listen_addrs()[0])
        request = JobRequest(job_id="r3", model="m",
                             messages=(Message(role="user", content="still answered"),))
        async with open_job(c, a.peer_id, request) as call:
            await call.accepted(5)
            async with aclosing(call.chunks()) as chunks:
                text = "".join([t async for t in chunks])
        assert opened, "the failing node was never tried"
        assert text == "still answered "
        assert relay.relayed == 1
        # The peer table remembers who failed: the next job goes to the good node first.
        now = trio.current_time()
        bad_entry, good_entry = (table.get(k.public_key.hex()) for k in (key_bad, key_good))
        assert bad_entry is not None and bad_entry.failures(now) == 1
        assert good_entry is not None and list(good_entry.outcomes)[-1][1] is True
        nursery.cancel_scope.cancel()
