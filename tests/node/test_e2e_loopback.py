"""End-to-end sealed jobs between a real client host and a real node host."""

from __future__ import annotations

import secrets
from contextlib import aclosing
from typing import Any

import pytest

from infernet.client import open_peer_client
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.jobs import JOB_PROTOCOL, open_job, serve_job_stream
from infernet.node.jobs import JobExecutor
from infernet.protocol.e2e import seal_request
from infernet.protocol.errors import JobFailed
from infernet.protocol.frames import JobRequest, Message
from infernet.protocol.keys import SecretKey
from tests.node.test_jobs import FakeEngine


def _serve(mesh: MeshHost, executor: JobExecutor) -> None:
    async def handle(stream: Any) -> None:
        await serve_job_stream(stream, executor.run)

    mesh.host.set_stream_handler(JOB_PROTOCOL, handle)


async def test_a_sealed_job_answers_and_the_wire_carries_only_ciphertext() -> None:
    node_key = SecretKey.generate().even_y()
    executor = JobExecutor(FakeEngine(), {"m"}, 2, node_key.public_key.hex(), key=node_key)
    async with open_host(node_key.secret_bytes(), listen_host="127.0.0.1", port=0) as node:
        _serve(node, executor)
        async with open_peer_client(node.listen_addrs()[0]) as client:
            chunks = [t async for t in client.stream_chat("m", "secret words here",
                                                          encrypt=True)]
            assert "".join(chunks) == "secret words here "
            assert client.result is not None and client.result.completion_tokens == 3

            # What a relay would see: the request and every chunk sealed.
            request = JobRequest(job_id="j-raw", model="m",
                                 messages=(Message(role="user", content="secret words"),))
            sealed = seal_request(request, client_key=client.key,
                                  recipient=node_key.public_key, nonce=secrets.token_bytes(32))
            assert sealed.messages == () and "secret" not in sealed.encrypted
            async with open_job(client.mesh, client.peer_id, sealed) as call:
                await call.accepted(5)
                async with aclosing(call.chunk_frames()) as frames:
                    seen = [f async for f in frames]
            assert seen and all(f.text == "" and f.encrypted for f in seen)


async def test_a_request_sealed_to_another_key_is_refused() -> None:
    node_key, other = SecretKey.generate().even_y(), SecretKey.generate()
    executor = JobExecutor(FakeEngine(), {"m"}, 1, node_key.public_key.hex(), key=node_key)
    async with open_host(node_key.secret_bytes(), listen_host="127.0.0.1", port=0) as node:
        _serve(node, executor)
        async with open_peer_client(node.listen_addrs()[0]) as client:
            request = JobRequest(job_id="j1", model="m",
                                 messages=(Message(role="user", content="x"),))
            sealed = seal_request(request, client_key=client.key, recipient=other.public_key,
                                  nonce=secrets.token_bytes(32))
            async with open_job(client.mesh, client.peer_id, sealed) as call:
                with pytest.raises(JobFailed) as exc:
                    await call.accepted(5)
    assert exc.value.code == "bad_request" and "another key" in str(exc.value)
