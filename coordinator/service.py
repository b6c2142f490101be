"""Running the coordinator: store writer, job manager, mesh peer, announcements and HTTP.

Owns: the coordinator's data directory (SQLite database and its libp2p key), the peer
table (`infernet.mesh.peers.PeerManager`: verified announcements, liveness pings and RTT,
connection events, peer exchange), redialling the nodes a previous run knew, and composing
everything in one nursery: the store's group-commit writer, the pool of pre-opened job
streams, the job manager (which sweeps what a previous run left unfinished before anything
is served), the peer manager and ``hypercorn.trio.serve``.

Invariants: nodes are learned only from verified announcements; a node is offline at once
when its connection drops and within 2 s when it stops answering pings;
``task_status.started`` fires only once HTTP and libp2p listen and the start-up sweep is
done; on shutdown queued store writes are committed.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Final

import msgspec
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve
from trio_typing import TaskStatus

from coordinator.app import CoordinatorState, create_app
from coordinator.auth import TokenCache
from coordinator.http_common import node_key_lookup
from coordinator.jobs import UNWITNESSED_PER_DAY, JobManager, JobSettings
from coordinator.ledger import Ledger
from coordinator.metrics import Metrics
from coordinator.ratelimit import DEFAULT_RPH, DEFAULT_RPM, HOUR, Limits, RateLimiter
from coordinator.registry import retired_keys
from coordinator.router import Router
from coordinator.store import AsyncStore, PeerRecord, Store
from coordinator.stream_pool import StreamPool
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.job_mux import SessionPool
from infernet.mesh.peers import PeerManager
from infernet.protocol.announce import Announcement, parse_announcement
from infernet.protocol.auth import AuthVerifier
from infernet.protocol.errors import InfernetError
from infernet.protocol.event import encode_event
from infernet.protocol.keys import SecretKey

__all__ = ["CoordinatorConfig", "CoordinatorInfo", "load_or_create_key", "open_store",
           "run_coordinator"]

log = logging.getLogger("coordinator")

DEFAULT_HTTP_PORT: Final = 8080
DEFAULT_P2P_PORT: Final = 46338
DB_FILE: Final = "coordinator.db"
KEY_FILE: Final = "coordinator.key"
MAX_NODE_CONNECTIONS: Final = 256  # peer exchange dials nodes up to this many connections
REDIAL_KNOWN_WITHIN: Final = 7 * 24 * 3600.0  # a node unseen for a week is not redialled
REDIAL_CONCURRENCY: Final = 8


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
    unwitnessed_per_day: int = UNWITNESSED_PER_DAY


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

    async def on_announcement(ann: Announcement, peer_id: str, connected: bool) -> None:
        log.info("node %s announced %s", ann.pubkey.hex()[:12],
                 ", ".join(m.name for m in ann.caps.models) or "no models")
        astore.write_nowait(store.save_peer, PeerRecord(
            ann.pubkey.hex(), peer_id, encode_event(ann.event).decode(), time.time()))
        router.notify(table.get(ann.pubkey.hex()))

    peers = PeerManager(mesh, key.public_key.hex(), max_peers=MAX_NODE_CONNECTIONS,
                        on_change=on_announcement)
    table = peers.table
    table.retire(retired_keys(store))
    router = Router(table)
    metrics = Metrics()
    limiter = RateLimiter()
    limiter.seed(store.job_times_since(time.time() - HOUR))
    sessions = SessionPool(mesh)
    streams = StreamPool(mesh, metrics=metrics, sessions=sessions)
    jobs = JobManager(astore, router, streams.open_job,
                      JobSettings(timeout=config.job_timeout,
                                  capacity_wait=config.capacity_wait,
                                  unwitnessed_per_day=config.unwitnessed_per_day),
                      metrics, key=key)
    metrics.watch(lambda: len(table.online(trio.current_time())), router.queued,
                  router.inflight, streams.idle)

    async def on_disconnect(peer_id: str) -> None:
        streams.drop(peer_id)  # the peer manager marks its nodes offline

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
        await nursery.start(sessions.serve)
        await nursery.start(streams.serve)
        await nursery.start(jobs.serve)
        await nursery.start(peers.serve)
        nursery.start_soon(redial_known_nodes, mesh, store.load_peers(), time.time())
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


def _known_addresses(record: PeerRecord, now: float) -> list[str]:
    """The dialable addresses of a stored announcement, if it still verifies."""
    if now - record.last_seen > REDIAL_KNOWN_WITHIN:
        return []
    try:
        created = msgspec.json.decode(record.event, type=dict[str, object]).get("created_at")
        if not isinstance(created, int):
            return []
        # Checked as of when it was received: it has expired since, its signature has not.
        ann = parse_announcement(record.event.encode(), now=created, sender_pubkey=None)
    except (msgspec.DecodeError, InfernetError) as exc:
        log.warning("stored announcement of %s is unusable: %s", record.pubkey[:12], exc)
        return []
    if ann.pubkey.hex() != record.pubkey:
        return []
    return [a if "/p2p/" in a else f"{a}/p2p/{record.peer_id}" for a in ann.caps.listen_addrs]


async def redial_known_nodes(mesh: MeshHost, records: Sequence[PeerRecord], now: float) -> None:
    """Dial the nodes a previous run knew (newest first), so a restarted coordinator finds
    them again without waiting for them to redial it; each node re-announces on connect."""
    limiter = trio.CapacityLimiter(REDIAL_CONCURRENCY)

    async def dial(pubkey: str, addrs: list[str]) -> None:
        async with limiter:
            for addr in addrs:
                try:
                    await mesh.connect(addr)
                except InfernetError as exc:
                    log.debug("known node %s not at %s: %s", pubkey[:12], addr, exc)
                    continue
                log.info("reconnected to known node %s", pubkey[:12])
                return

    async with trio.open_nursery() as nursery:
        for record in records:
            if addrs := _known_addresses(record, now):
                nursery.start_soon(dial, record.pubkey, addrs)


async def _housekeeping(limiter: RateLimiter) -> None:
    """Forget rate-limit state of tokens idle for an hour, once a minute."""
    while True:
        await trio.sleep(60)  # periodic work, not a wait for an event
        limiter.forget_idle(time.time())
