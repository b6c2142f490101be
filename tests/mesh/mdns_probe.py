"""Run inside a private network namespace by test_mdns: two hosts find each other by mDNS.

Prints one JSON line: whether each host connected to the other and how long it took.
"""

from __future__ import annotations

import json
import time

import trio

from infernet.mesh.host import open_host
from infernet.mesh.mdns import MdnsDiscovery
from infernet.protocol.keys import SecretKey


async def main() -> None:
    def key() -> bytes:
        return SecretKey.generate().even_y().secret_bytes()

    async with open_host(key(), listen_host="127.0.0.1", port=0) as a, \
            open_host(key(), listen_host="127.0.0.1", port=0) as b, \
            trio.open_nursery() as nursery:
        await nursery.start(MdnsDiscovery(a).serve)
        start = time.monotonic()  # from the moment the second peer comes up
        await nursery.start(MdnsDiscovery(b).serve)
        with trio.move_on_after(10):
            while not (a.is_connected(b.peer_id) and b.is_connected(a.peer_id)):  # noqa: ASYNC110
                await trio.sleep(0.02)
        print(json.dumps({"a_sees_b": a.is_connected(b.peer_id),
                          "b_sees_a": b.is_connected(a.peer_id),
                          "seconds": time.monotonic() - start}), flush=True)
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    trio.run(main)
