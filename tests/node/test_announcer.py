"""What the node announces: a drain is announced at once, so routers stop sending jobs."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from infernet.node.config import NodeConfig
from infernet.node.daemon import _Announcer
from infernet.node.jobs import JobExecutor
from infernet.protocol.announce import parse_announcement
from infernet.protocol.keys import SecretKey
from tests.node.test_jobs import FakeEngine


def _announcer() -> tuple[_Announcer, JobExecutor, SecretKey]:
    key = SecretKey.generate().even_y()
    executor = JobExecutor(FakeEngine(), {"m"}, 2, key.public_key.hex(), key=key)
    summary = SimpleNamespace(gpu_label=lambda: "")
    served: Any = SimpleNamespace(
        backend=SimpleNamespace(name="fake"), offers=lambda price: (),
        hardware=SimpleNamespace(tier="cpu", summary=lambda: summary))
    mesh: Any = SimpleNamespace(listen_addrs=lambda: ["/ip4/127.0.0.1/tcp/1"])
    return _Announcer(key, NodeConfig(), mesh, executor, served), executor, key


def test_draining_changes_the_routing_state_and_is_announced() -> None:
    announcer, executor, key = _announcer()
    before = announcer.state()
    caps = parse_announcement(announcer.encode(), now=int(time.time()),
                              sender_pubkey=key.public_key).caps
    assert not caps.draining and caps.slots_free == 2
    executor.draining = True
    assert announcer.state() != before  # the announce loop re-announces on this at once
    caps = parse_announcement(announcer.encode(), now=int(time.time()),
                              sender_pubkey=key.public_key).caps
    assert caps.draining and caps.slots_free == 0
    assert caps.slots_total == 2
