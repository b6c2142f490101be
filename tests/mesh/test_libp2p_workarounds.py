"""Each py-libp2p 0.8.1 default that open_host overrides (notes/py-libp2p.md), checked on real
hosts: these tests fail against a host built with the library's defaults."""

from __future__ import annotations

import math
import secrets

import libp2p.network.swarm as swarm_module
import multiaddr
import pytest
import trio
import trio.testing
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

from infernet.mesh.bootstrap import keep_connected
from infernet.mesh.host import open_host
from infernet.protocol.keys import SecretKey


def _key() -> bytes:
    return SecretKey.generate().even_y().secret_bytes()


async def test_plaintext_peers_cannot_connect() -> None:
    async with open_host(_key(), listen_host="127.0.0.1", port=0) as node:
        kp = create_new_key_pair(secrets.token_bytes(32))
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        plain = new_host(key_pair=kp, listen_addrs=listen,
                         sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(kp)})
        async with plain.run(listen_addrs=listen):
            with pytest.raises(Exception), trio.fail_after(10):  # noqa: B017 (any dial error)
                await plain.connect(info_from_p2p_addr(multiaddr.Multiaddr(node.listen_addrs()[0])))
            assert not node.connected_peers()
            await plain.close()


async def test_dials_have_no_happy_eyeballs_delay_and_inbound_slots_are_unbounded() -> None:
    async with open_host(_key(), listen_host="127.0.0.1", port=0) as node:
        assert swarm_module._HAPPY_EYEBALLS_DELAY == 0
        assert node.host.get_network()._inbound_limiter.total_tokens == math.inf


@pytest.mark.slow
async def test_a_node_still_accepts_peers_after_400_connect_disconnect_cycles() -> None:
    async with open_host(_key(), listen_host="127.0.0.1", port=0) as node:
        addr = node.listen_addrs()[0]
        for _ in range(400):
            async with open_host(_key(), listen_host="127.0.0.1", port=0) as visitor:
                await visitor.connect(addr)
        # 0.8.1's own limiter would refuse every inbound connection after 250.
        async with open_host(_key(), listen_host="127.0.0.1", port=0) as late:
            await late.connect(addr)
            assert late.is_connected(node.peer_id)


async def test_bootstrap_redials_a_peer_that_was_down_without_waiting_out_libp2p_cache() -> None:
    key = _key()
    async with open_host(key, listen_host="127.0.0.1", port=0) as first:
        addr = first.listen_addrs()[0]
        port = int(multiaddr.Multiaddr(addr).value_for_protocol("tcp"))
    # the bootstrap peer is down now; the node keeps trying in the background
    async with open_host(_key(), listen_host="127.0.0.1", port=0) as node, \
            trio.open_nursery() as nursery:
        nursery.start_soon(keep_connected, node, [addr])
        await trio.testing.wait_all_tasks_blocked()
        async with open_host(key, listen_host="127.0.0.1", port=port) as back:
            with trio.fail_after(10):  # libp2p alone would refuse to redial for 60 s
                while not node.is_connected(back.peer_id):  # noqa: ASYNC110 (library state)
                    await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
