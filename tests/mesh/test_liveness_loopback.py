"""Ping-based liveness between real hosts: RTTs are measured, a silent peer is dropped in < 2 s."""

from __future__ import annotations

from typing import Any

import trio
from libp2p.host.ping import ID as PING_PROTOCOL

from infernet.mesh.host import open_host
from infernet.mesh.liveness import Liveness
from infernet.protocol.keys import SecretKey


def _key() -> bytes:
    return SecretKey.generate().even_y().secret_bytes()


async def test_rtt_is_measured_and_a_silent_peer_is_dropped_within_two_seconds() -> None:
    rtts: list[float] = []
    silent: list[str] = []
    got_rtt, went_silent = trio.Event(), trio.Event()

    def on_rtt(peer: str, ms: float) -> None:
        rtts.append(ms)
        got_rtt.set()

    async def on_silent(peer: str) -> None:
        silent.append(peer)
        went_silent.set()

    async with open_host(_key(), listen_host="127.0.0.1", port=0) as a, \
            open_host(_key(), listen_host="127.0.0.1", port=0) as b, \
            trio.open_nursery() as nursery:
        liveness = Liveness(a, on_rtt, on_silent)
        await nursery.start(liveness.serve)
        await a.connect(b.listen_addrs()[0])
        liveness.watch(b.peer_id)
        liveness.watch(b.peer_id)  # idempotent
        with trio.fail_after(5):
            await got_rtt.wait()
        assert 0 <= rtts[0] < 1000
        assert liveness.watched == {b.peer_id}

        # B keeps its connection but stops answering pings (a hung process, as seen from A).
        async def hang(stream: Any) -> None:
            await trio.sleep_forever()

        b.host.set_stream_handler(PING_PROTOCOL, hang)
        await a.host.disconnect(b.host.get_id())  # the old ping stream goes with it...
        await a.connect(b.listen_addrs()[0])  # ...and a fresh connection meets the hung handler
        liveness.watch(b.peer_id)
        start = trio.current_time()
        with trio.fail_after(5):
            await went_silent.wait()
        assert trio.current_time() - start < 2.5  # stream open + PONG_TIMEOUT
        assert silent == [b.peer_id]
        assert not a.is_connected(b.peer_id)
        nursery.cancel_scope.cancel()
