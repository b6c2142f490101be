"""The node daemon: engine + libp2p host + announcements + job service, in one nursery.

Owns: composing the pieces in order (engine healthy → host listening → job handler set →
announcements flowing → owner commands served (`infernet.node.owner_service`: the mesh
protocol, and the coordinator's queue when ``coordinator_url`` is set) → bootstrap dials in
the background), one delegated model key per served model, reporting readiness through
``task_status``, and tearing everything down on cancellation.

Invariants: the node is ready only when the engine answered and the host listens; the node
announces at start, every 30 s, and as soon as a new peer joins its gossip mesh.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import trio
from trio_typing import TaskStatus

from infernet.backends.base import Backend
from infernet.backends.inventory import Inventory, build_inventory, watch_served_models
from infernet.backends.select import open_backend
from infernet.mesh.bootstrap import bootstrap_from_coordinator, keep_connected
from infernet.mesh.directory import Directory
from infernet.mesh.gossip import AnnouncementGossip
from infernet.mesh.host import MeshHost, open_host
from infernet.mesh.job_mux import JOB_MUX_PROTOCOL, SessionServer
from infernet.mesh.jobs import JOB_PROTOCOL, serve_job_stream
from infernet.mesh.mdns import MdnsDiscovery
from infernet.mesh.peers import PeerManager
from infernet.node.config import ConfigError, NodeConfig, config_path
from infernet.node.control import NodeControl, NodeParts
from infernet.node.hardware import HardwareInfo, detect_hardware
from infernet.node.identity import retired_keys
from infernet.node.jobs import JobExecutor
from infernet.node.owner_service import refresh_model_keys, serve_owner_commands
from infernet.node.receipt_store import ReceiptQueue, ReceiptStore
from infernet.node.receipt_submit import ReceiptSubmitter
from infernet.node.relay import Relay
from infernet.protocol.announce import Capabilities, ModelOffer, build_announcement
from infernet.protocol.directory import DIRECTORY_PROTOCOL
from infernet.protocol.errors import BackendError
from infernet.protocol.event import encode_event
from infernet.protocol.keys import SecretKey

__all__ = ["NodeInfo", "run_node"]

log = logging.getLogger("infernet.node")

ANNOUNCE_EVERY: Final = 30.0
ANNOUNCE_TTL: Final = 120
MESH_CHECK_EVERY: Final = 0.5
MIN_ANNOUNCE_GAP: Final = 2.0  # re-announce on a change at most this often


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What a started node reports: identity, addresses and what it serves."""

    pubkey: str
    peer_id: str
    listen_addrs: tuple[str, ...]
    backend: str
    models: tuple[str, ...]


class _Announcer:
    def __init__(self, key: SecretKey, config: NodeConfig, mesh: MeshHost,
                 executor: JobExecutor, served: _Served) -> None:
        self.key = key
        self.config = config
        self.mesh = mesh
        self.executor = executor
        self.served = served
        self.last_published: float | None = None  # unix time, for `infernet status`

    def encode(self) -> bytes:
        now = int(time.time())
        offers = self.served.offers(self.config.price_per_1k_output)
        hardware = self.served.hardware
        caps = Capabilities(
            backend=self.served.backend.name,
            models=tuple(o for o in offers if o.name in self.executor.models),
            vram_tier=hardware.tier,
            gpu=hardware.summary().gpu_label(),
            slots_total=int(self.executor.limiter.total_tokens),
            slots_free=self.executor.free_slots,
            draining=self.executor.draining,
            listen_addrs=tuple(self.mesh.listen_addrs()) if self.config.advertise else (),
            expires_at=now + ANNOUNCE_TTL,
        )
        return encode_event(build_announcement(caps, self.key, now))

    def state(self) -> tuple[tuple[str, ...], int, bool]:
        """What peers route on: a change here is announced at once (rate-limited)."""
        return (tuple(sorted(self.executor.models)), self.executor.free_slots,
                self.executor.draining)

    async def run(self, gossip: AnnouncementGossip) -> None:
        last_sent = -ANNOUNCE_EVERY
        known: set[str] = set()
        announced = self.state()
        while True:
            peers = gossip.mesh_peers()
            now = trio.current_time()
            changed = self.state() != announced and now - last_sent >= MIN_ANNOUNCE_GAP
            if peers - known or changed or now - last_sent >= ANNOUNCE_EVERY:
                announced = self.state()
                await gossip.publish(self.encode())
                last_sent = trio.current_time()
                self.last_published = time.time()
            known = peers
            await trio.sleep(MESH_CHECK_EVERY)  # periodic check of mesh and load


class _Served:
    """What the node advertises: the engine's models reconciled with ``served_models`` and
    the memory budget (weights hash, fit, quantization; infernet.backends.inventory)."""

    def __init__(self, backend: Backend, hardware: HardwareInfo, home: Path) -> None:
        self.backend = backend
        self.hardware = hardware
        self.hash_cache = home / "cache" / "weights.json"
        self.inventory: Inventory | None = None

    async def refresh(self, served_models: Iterable[str]) -> None:
        """Rebuild the inventory (logs missing and refused models).

        Raises:
            BackendError: the engine cannot list its models.
        """
        self.inventory = await build_inventory(self.backend, served_models,
                                               self.hardware.memory_budget_bytes,
                                               hash_cache=self.hash_cache)

    def models(self) -> set[str]:
        return {m.name for m in self.inventory.serve} if self.inventory else set()

    def weights(self) -> dict[str, str]:
        return {m.name: m.weights_hash for m in self.inventory.serve} if self.inventory else {}

    def offers(self, price_per_1k_output: float) -> tuple[ModelOffer, ...]:
        served = self.inventory.serve if self.inventory else ()
        return tuple(ModelOffer(name=m.name, weights_hash=m.weights_hash,
                                quantization=m.quantization,
                                price_per_1k_output=price_per_1k_output)
                     for m in sorted(served, key=lambda m: m.name))


async def _follow_served_models(home: Path, served: _Served, executor: JobExecutor,
                                key: SecretKey) -> None:
    """Serve what ``served_models`` says as the operator edits it (``infernet model ...``);
    the announcer sees the new set and re-announces at once."""
    first = True
    async for wanted in watch_served_models(config_path(home)):
        if first:  # the start-up list was already applied from the same file
            first = False
            continue
        try:
            await served.refresh(wanted)
        except BackendError as exc:
            log.warning("served_models changed but the engine did not answer: %s", exc)
            continue
        executor.weights = served.weights()
        if served.models() != executor.models:
            log.info("now serving: %s", ", ".join(sorted(served.models())) or "nothing")
            executor.models = served.models()
            refresh_model_keys(home, key, executor.weights)


def _retired_keys(home: Path) -> dict[str, int] | None:
    """The keys this node rotated away (for its earlier receipts); None if unreadable, which
    leaves the coordinator to judge those receipts."""
    try:
        return retired_keys(home)
    except ConfigError as exc:
        log.warning("receipts: %s; receipts of earlier node keys go to the coordinator as they "
                    "are", exc)
        return None


async def run_node(
    home: Path,
    config: NodeConfig,
    key: SecretKey,
    *,
    stop: trio.Event | None = None,
    task_status: TaskStatus[NodeInfo] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node until cancelled; ``task_status.started(NodeInfo)`` once it serves jobs.

    Setting ``stop`` (or ``POST /stop`` on the control port) drains and returns: new jobs
    are refused, jobs in flight get up to ``config.drain_timeout`` seconds to finish.

    Raises:
        BackendError: the engine did not come up.
        TransportError: the port cannot be bound or a bootstrap address is malformed.
        InfernetError: the control port cannot be bound.
    """
    async with open_backend(config, home) as backend:
        hardware = await trio.to_thread.run_sync(detect_hardware, home)
        served = _Served(backend, hardware, home)
        await served.refresh(config.served_models)
        models, weights = served.models(), served.weights()
        log.info("engine %s ready; models: %s", backend.name, ", ".join(sorted(models)))
        refresh_model_keys(home, key, weights)  # one delegated key per served model
        async with open_host(key.secret_bytes(), listen_host=config.listen_host,
                             port=config.port) as mesh:
            peers = PeerManager(mesh, key.public_key.hex())
            relay = Relay(mesh, peers.table, key.public_key.hex())
            # Every signed receipt is kept on disk and, with a coordinator, handed to it.
            receipts = ReceiptQueue(ReceiptStore(home))
            submitter = (ReceiptSubmitter(receipts, config.coordinator_url, key,
                                          retired=_retired_keys(home))
                         if config.coordinator_url else None)
            executor = JobExecutor(backend, models, config.engine_slots, key.public_key.hex(),
                                   relay=relay, key=key, weights=weights,
                                   on_receipt=receipts.add_nowait)

            announcer = _Announcer(key, config, mesh, executor, served)
            control = NodeControl(NodeParts(
                home=home, config=config, key=key, backend=backend, executor=executor,
                mesh=mesh, table=peers.table, last_announced=lambda: announcer.last_published,
                receipts=receipts, submitter=submitter,
            ), stop)
            runner = control.jobs.wrap(executor.run)  # counts jobs, refuses them when draining

            async def handle(stream: Any) -> None:
                await serve_job_stream(stream, runner)

            mesh.host.set_stream_handler(JOB_PROTOCOL, handle)
            mesh.host.set_stream_handler(JOB_MUX_PROTOCOL, SessionServer(runner).handle)
            directory = Directory(peers.table, announcer.encode, lambda: executor.models)
            mesh.host.set_stream_handler(DIRECTORY_PROTOCOL, directory.handle)
            async with trio.open_nursery() as nursery:
                await nursery.start(peers.serve)
                await nursery.start(receipts.serve)
                if submitter is not None:
                    await nursery.start(submitter.serve)
                nursery.start_soon(announcer.run, peers.gossip)
                nursery.start_soon(_follow_served_models, home, served, executor, key)
                await nursery.start(serve_owner_commands, home, config, key, mesh)
                if config.bootstrap:
                    nursery.start_soon(keep_connected, mesh, list(config.bootstrap))
                if config.coordinator_url:
                    nursery.start_soon(bootstrap_from_coordinator, mesh, config.coordinator_url)
                if config.mdns:
                    await nursery.start(MdnsDiscovery(mesh).serve)
                info = NodeInfo(
                    pubkey=key.public_key.hex(),
                    peer_id=mesh.peer_id,
                    listen_addrs=tuple(mesh.listen_addrs()),
                    backend=backend.name,
                    models=tuple(sorted(models)),
                )
                await nursery.start(control.serve)
                log.info("node %s listening on %s", info.peer_id, ", ".join(info.listen_addrs))
                task_status.started(info)
                await control.run_until_stopped()
                nursery.cancel_scope.cancel()
