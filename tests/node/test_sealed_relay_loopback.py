"""A sealed job crosses a relay as ciphertext, and the client checks the node's receipt.

Real libp2p hosts on loopback: a client dials a node that does not serve the model; it asks
that node (directory protocol) who does, seals the job to that node's key, and the relay in
between forwards frames it cannot read.
"""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import pytest
import trio

from infernet.client import open_peer_client
from infernet.mesh.directory import Directory, ask_directory
from infernet.mesh.gossip import AnnouncementGossip
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.jobs import JOB_PROTOCOL, SendFrame, serve_job_stream
from infernet.mesh.peer_table import PeerTable
from infernet.node.jobs import JobExecutor
from infernet.node.relay import Relay
from infernet.protocol.announce import Announcement
from infernet.protocol.directory import DIRECTORY_PROTOCOL
from infernet.protocol.errors import RemoteProtocolError
from infernet.protocol.frames import Accepted, Chunk, FinalFrame, Frame, JobRequest
from infernet.protocol.keys import SecretKey
from infernet.protocol.receipt import Receipt, output_hash, prompt_hash, sign_receipt
from tests.node.test_jobs import FakeEngine
from tests.node.test_relay_loopback import _announce


def _key() -> SecretKey:
    return SecretKey.generate().even_y()


async def _mesh_of_relay_and_server(nursery: trio.Nursery, relay_host: MeshHost,
                                    server: MeshHost, server_key: SecretKey,
                                    table: PeerTable) -> None:
    async def on_announcement(ann: Announcement, peer_id: str) -> None:
        table.update(ann, peer_id, trio.current_time(),
                     connected=relay_host.is_connected(peer_id))

    async def ignore(ann: Announcement, peer_id: str) -> None:
        return None

    await nursery.start(AnnouncementGossip(relay_host, on_announcement).serve)
    gossip = AnnouncementGossip(server, ignore)
    await nursery.start(gossip.serve)
    await server.connect(relay_host.listen_addrs()[0])
    with trio.fail_after(10):
        while table.get(server_key.public_key.hex()) is None:
            await gossip.publish(_announce(server_key, ["m"]))
            await trio.sleep(0.1)


async def test_a_sealed_job_through_a_relay_is_ciphertext_to_the_relay() -> None:
    relay_key, server_key = _key(), _key()
    through_relay: list[Frame] = []
    requests_at_relay: list[JobRequest] = []
    async with open_host(relay_key.secret_bytes(), listen_host="127.0.0.1", port=0) as a, \
            open_host(server_key.secret_bytes(), listen_host="127.0.0.1", port=0) as s, \
            trio.open_nursery() as nursery:
        table = PeerTable()
        relay = Relay(a, table, relay_key.public_key.hex())
        relay_exec = JobExecutor(FakeEngine(), set(), 1, relay_key.public_key.hex(),
                                 relay=relay, key=relay_key)

        async def recording(request: JobRequest, peer: str, send: SendFrame) -> None:
            requests_at_relay.append(request)

            async def record(frame: Frame) -> None:
                through_relay.append(frame)
                await send(frame)

            await relay_exec.run(request, peer, record)

        async def handle(stream: Any) -> None:
            await serve_job_stream(stream, recording)

        a.host.set_stream_handler(JOB_PROTOCOL, handle)
        a.host.set_stream_handler(DIRECTORY_PROTOCOL,
                                  Directory(table, lambda: None, set).handle)
        server_exec = JobExecutor(FakeEngine(), {"m"}, 1, server_key.public_key.hex(),
                                  key=server_key)

        async def serve(stream: Any) -> None:
            await serve_job_stream(stream, server_exec.run)

        s.host.set_stream_handler(JOB_PROTOCOL, serve)
        await _mesh_of_relay_and_server(nursery, a, s, server_key, table)

        async with open_peer_client(a.listen_addrs()[0]) as client:
            found = await ask_directory(client.mesh, client.peer_id, "m")
            assert [x.pubkey.hex() for x in found] == [server_key.public_key.hex()]
            text = "".join([t async for t in client.stream_chat("m", "the secret plan",
                                                                encrypt=True)])
            result = client.result
        assert text == "the secret plan "
        assert result is not None and result.node_pubkey == server_key.public_key.hex()
        assert result.receipt_id  # signed by the server, checked against what we got
        assert relay.relayed == 1
        # What the relay handled: a request without readable messages, chunks it could not
        # read, and the plaintext nowhere.
        assert len(requests_at_relay) == 1 and requests_at_relay[0].messages == ()
        assert requests_at_relay[0].encrypted_to == server_key.public_key.hex()
        chunks = [f for f in through_relay if isinstance(f, Chunk)]
        assert chunks and all(c.encrypted and c.text == "" for c in chunks)
        assert "secret" not in repr(requests_at_relay) + repr(through_relay)
        nursery.cancel_scope.cancel()


async def test_a_receipt_that_does_not_hash_the_answer_is_refused_by_the_client() -> None:
    node_key = _key()

    async def lying(request: JobRequest, peer: str, send: SendFrame) -> None:
        await send(Accepted(job_id=request.job_id, node_pubkey=node_key.public_key.hex()))
        await send(Chunk(job_id=request.job_id, text="Paris"))
        receipt = Receipt(job_id=request.job_id, node_pubkey=node_key.public_key.hex(),
                          model="m", input_tokens=1, output_tokens=1,
                          completed_at=int(time.time()), value=Decimal("0.001"), chain="base",
                          prompt_hash=prompt_hash(request.messages),
                          output_hash=output_hash("a much longer answer, billed"))
        await send(FinalFrame(job_id=request.job_id, prompt_tokens=1, completion_tokens=1,
                              receipt=sign_receipt(receipt, node_key)))

    async with open_host(node_key.secret_bytes(), listen_host="127.0.0.1", port=0) as node:
        async def handle(stream: Any) -> None:
            await serve_job_stream(stream, lying)

        node.host.set_stream_handler(JOB_PROTOCOL, handle)
        async with open_peer_client(node.listen_addrs()[0]) as client:
            with pytest.raises(RemoteProtocolError, match="output_hash"):
                async for _ in client.stream_chat("m", "capital of France?"):
                    pass
