"""A whole coordinator in one trio process, minus the mesh: store, writer, router, jobs, app.

`open_harness` wires the same objects `coordinator.service` wires, with `FakeNodes` in place
of libp2p, and hands out Quart's test client for the real app.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from coordinator.app import create_app
from coordinator.auth import TokenCache
from coordinator.http_common import CoordinatorState, node_key_lookup
from coordinator.jobs import JobManager, JobSettings, LiveJob
from coordinator.ledger import Ledger
from coordinator.metrics import Metrics
from coordinator.ratelimit import HOUR, Limits, RateLimiter
from coordinator.router import Router
from coordinator.store import AsyncStore, Store
from infernet.mesh.peer_table import PeerTable
from infernet.protocol.auth import AuthVerifier
from infernet.protocol.keys import SecretKey
from tests.coordinator.fakes import FakeNodes

FAST = JobSettings(timeout=30.0, capacity_wait=0.3)
COORDINATOR_KEY = SecretKey.generate().even_y()


@dataclass
class Harness:
    state: CoordinatorState
    nodes: FakeNodes
    client: Any
    token: str
    token_id: str
    db: Store

    def auth(self, token: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token}", **extra}

    async def post_json(self, path: str, body: Any, token: str | None = None,
                        **headers: str) -> Any:
        return await self.client.post(path, data=json.dumps(body).encode(),
                                      headers={**self.auth(token),
                                               "Content-Type": "application/json", **headers})

    async def get(self, path: str, token: str | None = None) -> Any:
        return await self.client.get(path, headers=self.auth(token))

    def live(self, job_id: str) -> LiveJob:
        job = self.state.jobs.get(job_id)
        assert job is not None, f"job {job_id} is not in memory"
        return job

    async def finished(self, job_id: str) -> LiveJob:
        """Wait (on the job's own events, no polling) until the job ended."""
        job = self.live(job_id)
        await job.wait_ended()
        return job


@asynccontextmanager
async def open_harness(
    tmp_path: Path, settings: JobSettings = FAST, *, limits: Limits | None = None
) -> AsyncIterator[Harness]:
    store = Store(tmp_path / "coordinator.db")
    try:
        astore = AsyncStore(store)
        table = PeerTable()
        router = Router(table)
        metrics = Metrics()
        limiter = RateLimiter()
        limiter.seed(store.job_times_since(time.time() - HOUR))
        nodes = FakeNodes(table)
        jobs = JobManager(astore, router, nodes.open, settings, metrics, key=COORDINATOR_KEY)
        token, record = store.create_token("tests")
        state = CoordinatorState(
            table=table, store=astore, router=router, jobs=jobs, tokens=TokenCache(astore),
            limiter=limiter, metrics=metrics, peer_id="16Uiu2HAmCoordinator",
            bootstrap_addrs=lambda: ["/ip4/127.0.0.1/tcp/46338/p2p/16Uiu2HAmCoordinator"],
            ledger=Ledger(astore), node_auth=AuthVerifier(node_key_lookup(table)),
            default_limits=limits or Limits(per_minute=10_000, per_hour=100_000),
            coordinator_pubkey=COORDINATOR_KEY.public_key.hex())
        metrics.watch(lambda: len(table.online(trio.current_time())), router.queued,
                      router.inflight)
        app = create_app(state)
        async with trio.open_nursery() as nursery:
            await nursery.start(astore.serve)
            await nursery.start(jobs.serve)
            async with app.test_app() as test_app:
                yield Harness(state, nodes, test_app.test_client(), token, record.id, store)
            nursery.cancel_scope.cancel()
    finally:
        store.close()


def sse_data(raw: bytes) -> list[Any]:
    """The ``data:`` payloads of an SSE body (JSON decoded, ``[DONE]`` kept as a string)."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out
