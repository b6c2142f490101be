"""Running the coordinator: store writer, job manager, mesh peer, announcements and HTTP.

Owns: the coordinator's data directory (SQLite database and its libp2p key), the peer
table fed by verified announcements and connection events, and composing everything in one
nursery: the store's group-commit writer, the pool of pre-opened job streams, the job
manager (which sweeps what a previous run left unfinished before anything is served), the
gossip listener and ``hypercorn.trio.serve``.

Invariants: nodes are learned only from verified announcements; a node is offline at once
when its connection drops; ``task_status.started`` fires only once HTTP and libp2p listen
and the start-up sweep is done; on shutdown queued store writes are committed.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from trio_typing import TaskStatus

from coordinator.app import CoordinatorState, create_app
from coordinator.auth import TokenCache
from coordinator.http_common import node_key_lookup
from coordinator.jobs import JobManager, JobSettings
from coordinator.ledger import Ledger
from coordinator.metrics import Metrics
from coordinator.ratelimit import DEFAULT_RPH, DEFAULT_RPM, HOUR, Limits, RateLimiter
from coordinator.router import Router
from coordinator.store import AsyncStore, PeerRecord, Store
from coordinator.stream_pool import StreamPool
from infernet.mesh.gossip import AnnouncementGossip
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.peer_table import PeerTable
from infernet.protocol.announce import Announcement
from infernet.protocol.auth import AuthVerifier
from infernet.protocol.event import encode_event
from infernet.protocol.keys import SecretKey

__all__ = ["CoordinatorConfig", "CoordinatorInfo", "load_or_create_key", "open_store",
           "run_coordinator"]

log = logging.getLogger("coordinator")

DEFAULT_HTTP_PORT: Final = 8080
DEFAULT_P2P_PORT: Final = 46338
DB_FILE: Final = "coordinator.db"
KEY_FILE: Final = "coordinator.key"


@dataclass(frozen=True, slots=True)
class CoordinatorConfig:
    """Where the coordinator listens and keeps its state."""

    data_dir: Path
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    p2p_host: str = "0.0.0.0"
    p2p_port: int = DEFAULT_P2P_PORT
    job_timeout: float = 300.0
    capacity_wait: float = 5.0
    rpm: int = DEFAULT_RPM
    rph: int = DEFAULT_RPH


@dataclass(frozen=True, slots=True)
class CoordinatorInfo:
    """Where a started coordinator can be reached."""

    api_url: str
    peer_id: str
    bootstrap_addrs: tuple[str, ...]


def load_or_create_key(data_dir: Path) -> SecretKey:
    """The coordinator's libp2p/Nostr key, created (0600) on first use."""
    path = data_dir / KEY_FILE
    if path.exists():
        return SecretKey.from_hex(path.read_text().strip())
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = SecretKey.generate().even_y()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.hex() + "\n")
    return key


def open_store(data_dir: Path) -> Store:
    """Open (and migrate) the coordinator database."""
    return Store(data_dir / DB_FILE)


def _loopback_first(addrs: list[str], host: str) -> tuple[str, ...]:
    if host not in ("0.0.0.0", "::"):
        return tuple(addrs)
    return tuple(sorted(addrs, key=lambda a: "/127.0.0.1/" not in a))


async def run_coordinator(
    config: CoordinatorConfig,
    *,
    task_status: TaskStatus[CoordinatorInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the coordinator until cancelled.

    Raises:
        TransportError: the libp2p port cannot be bound.
        OSError: the HTTP port cannot be bound.
    """
    key = load_or_create_key(config.data_dir)
    store = open_store(config.data_dir)
    try:
        async with open_host(key.secret_bytes(), listen_host=config.p2p_host,
                             port=config.p2p_port) as mesh:
            await _serve(config, key, store, mesh, task_status)
    finally:
        store.close()


async def _serve(config: CoordinatorConfig, key: SecretKey, store: Store, mesh: MeshHost,
                 task_status: TaskStatus[CoordinatorInfo]) -> None:
    astore = AsyncStore(store)
    table = PeerTable()
    router = Router(table)
    metrics = Metrics()
    limiter = RateLimiter()
    limiter.seed(store.job_times_since(time.time() - HOUR))
    streams = StreamPool(mesh, metrics=metrics)
    jobs = JobManager(astore, router, streams.open_job,
                      JobSettings(timeout=config.job_timeout,
                                  capacity_wait=config.capacity_wait), metrics, key=key)
    metrics.watch(lambda: len(table.online(trio.current_time())), router.queued,
                  router.inflight, streams.idle)

    async def on_announcement(ann: Announcement, peer_id: str) -> None:
        connected = mesh.is_connected(peer_id)
        if table.update(ann, peer_id, trio.current_time(), connected=connected):
            log.info("node %s announced %s", ann.pubkey.hex()[:12],
                     ", ".join(m.name for m in ann.caps.models) or "no models")
            astore.write_nowait(store.save_peer, PeerRecord(
                ann.pubkey.hex(), peer_id, encode_event(ann.event).decode(), time.time()))
            router.notify(table.get(ann.pubkey.hex()))

    async def on_disconnect(peer_id: str) -> None:
        streams.drop(peer_id)
        for pubkey in table.mark_disconnected(peer_id):
            log.info("node %s disconnected", pubkey[:12])

    mesh.on_disconnect(on_disconnect)
    state = CoordinatorState(
        table=table, store=astore, router=router, jobs=jobs, tokens=TokenCache(astore),
        limiter=limiter, metrics=metrics, peer_id=mesh.peer_id,
        bootstrap_addrs=lambda: _loopback_first(mesh.listen_addrs(), config.p2p_host),
        ledger=Ledger(astore), node_auth=AuthVerifier(node_key_lookup(table)),
        default_limits=Limits(per_minute=config.rpm, per_hour=config.rph),
        coordinator_pubkey=key.public_key.hex())
    hconfig = HypercornConfig()
    hconfig.bind = [f"{config.http_host}:{config.http_port}"]
    hconfig.accesslog = None
    hconfig.errorlog = logging.getLogger("coordinator.http")
    hconfig.graceful_timeout = 2.0
    async with trio.open_nursery() as nursery:
        await nursery.start(astore.serve)
        await nursery.start(streams.serve)
        await nursery.start(jobs.serve)
        gossip = AnnouncementGossip(mesh, on_announcement)
        await nursery.start(gossip.serve)
        nursery.start_soon(_housekeeping, limiter)
        urls = await nursery.start(partial(serve, create_app(state), hconfig))
        info = CoordinatorInfo(
            api_url=str(urls[0]) if urls else f"http://{config.http_host}:{config.http_port}",
            peer_id=mesh.peer_id,
            bootstrap_addrs=_loopback_first(mesh.listen_addrs(), config.p2p_host),
        )
        log.info("coordinator API on %s; bootstrap %s", info.api_url,
                 info.bootstrap_addrs[0] if info.bootstrap_addrs else "-")
        task_status.started(info)


async def _housekeeping(limiter: RateLimiter) -> None:
    """Forget rate-limit state of tokens idle for an hour, once a minute."""
    while True:
        await trio.sleep(60)  # periodic work, not a wait for an event
        limiter.forget_idle(time.time())
