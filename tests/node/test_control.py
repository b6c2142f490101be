"""The control server on a real loopback socket, around stand-in node parts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from infernet.node.config import NodeConfig
from infernet.node.control import NodeControl, NodeParts
from infernet.node.runfiles import read_control
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import SecretKey, encode_npub


class StubBackend:
    name = "fake"

    def __init__(self) -> None:
        self.healthy = True

    async def health(self) -> bool:
        return self.healthy


class StubExecutor:
    def __init__(self) -> None:
        self.models = {"m1", "m0"}
        self.limiter = trio.CapacityLimiter(2)
        self.draining = False

    @property
    def free_slots(self) -> int:
        return 0 if self.draining else int(self.limiter.available_tokens)


class StubMesh:
    peer_id = "16Uiu2HAstub"

    def connected_peers(self) -> list[str]:
        return ["a", "b"]

    def listen_addrs(self) -> list[str]:
        return ["/ip4/127.0.0.1/tcp/4001/p2p/16Uiu2HAstub"]


class StubTable:
    def online(self, now: float) -> list[object]:
        return [object()]


def make_control(home: Path, **config: Any) -> tuple[NodeControl, SecretKey]:
    key = SecretKey.generate().even_y()
    parts = NodeParts(home=home, config=NodeConfig(**{"control_port": 0, **config}), key=key,
                      backend=StubBackend(), executor=StubExecutor(),  # type: ignore[arg-type]
                      mesh=StubMesh(), table=StubTable(),  # type: ignore[arg-type]
                      last_announced=lambda: 1.0)
    return NodeControl(parts), key


async def test_status_metrics_and_stop(tmp_path: Path) -> None:
    control, key = make_control(tmp_path)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(control.serve)
        endpoint = read_control(tmp_path)
        assert endpoint is not None and endpoint.port == port
        assert (tmp_path / "run" / "control.json").stat().st_mode & 0o777 == 0o600
        base = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base) as client:
            doc = (await client.get("/status")).json()
            assert doc["node_id"] == key.public_key.hex()
            assert doc["npub"] == encode_npub(key.public_key)
            assert doc["state"] == "serving" and doc["online"] is True
            assert doc["models"] == ["m0", "m1"]
            assert doc["peers"] == {"connected": 2, "online": 1}
            assert doc["slots"] == {"total": 2, "free": 2}
            assert doc["jobs"]["running"] == 0 and doc["jobs"]["completed"] == 0
            assert doc["backend"] == {"name": "fake", "url": None, "healthy": True,
                                      "checked_at": None}
            assert doc["last_announcement_at"] == 1.0
            assert doc["control_port"] == port

            metrics = await client.get("/metrics")
            assert metrics.headers["content-type"].startswith("text/plain")
            assert "infernet_peers_connected 2.0" in metrics.text
            assert "infernet_engine_up 1.0" in metrics.text

            assert (await client.post("/stop")).status_code == 401
            wrong = await client.post("/stop", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
            assert not control.stop_requested.is_set()
            assert (await client.get("/stop")).status_code == 405
            assert (await client.get("/nope")).status_code == 404
            # A page on another origin resolving to 127.0.0.1 must not read the node.
            rebind = await client.get("/status", headers={"Host": "evil.example:80"})
            assert rebind.status_code == 403

            ok = await client.post("/stop",
                                   headers={"Authorization": f"Bearer {endpoint.token}"})
            assert ok.status_code == 202 and ok.json()["state"] == "draining"
        with trio.fail_after(5):
            await control.stop_requested.wait()
            await control.run_until_stopped()  # nothing in flight: returns at once
        async with httpx.AsyncClient(base_url=base) as client:
            doc = (await client.get("/status")).json()
            # Draining announces no free slot, so peers and the coordinator go elsewhere.
            assert doc["state"] == "draining" and doc["slots"]["free"] == 0
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "run" / "control.json").exists()


async def test_garbage_request_gets_400(tmp_path: Path) -> None:
    control, _ = make_control(tmp_path)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(control.serve)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"NOT HTTP AT ALL\r\n\r\n")
            reply = b""
            with trio.fail_after(5):
                while chunk := await stream.receive_some(4096):
                    reply += chunk
        assert reply.startswith(b"HTTP/1.1 400")
        nursery.cancel_scope.cancel()


async def test_busy_control_port_is_a_clear_error(tmp_path: Path) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        control, _ = make_control(tmp_path, control_port=port)
        with pytest.raises(InfernetError, match="cannot bind the control port") as info:
            await control.serve()
        assert "INFERNET_CONTROL_PORT=0" in str(info.value)
    assert not (tmp_path / "run" / "control.json").exists()
