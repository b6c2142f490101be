"""The libp2p host every Infernet peer runs, with py-libp2p 0.8.1's unsafe defaults fixed.

Owns: building the host from the node's secp256k1 key, Noise-only security, yamux, the
gossipsub router, dialing, connection notifications and clean shutdown.

Invariants (each from ../shared/notes/py-libp2p.md, "Defaults you must override"):
1. Only Noise is offered: never plaintext, secio or TLS.
2. No 250 ms happy-eyeballs wait on dials.
3. The swarm's inbound limiter (which leaks slots in 0.8.1) is replaced by an unbounded one;
   `MeshHost` enforces its own connection cap (`max_connections`).
5. Gossipsub heartbeat ~1 s; spam protection off (we rate-limit our own announcements).
7. The host is closed in a shielded ``finally`` (leaving ``run()`` does not close sockets).
8. The auto-connector never re-dials on its own: dials are ours (see `bootstrap.py`).
9. Yamux sends a WINDOW_UPDATE once half a stream's window was read (go-yamux's rule), not
   after every read (py-libp2p's default, ``PY_YAMUX_RELEASE_ON_READ=1``): a job's frames are
   one read, so the default cost an extra encrypted frame each way per job.
"""

from __future__ import annotations

import logging
import math
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Final

import libp2p.network.swarm as _swarm
import multiaddr
import trio
from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.protocol_muxer.exceptions import ProtocolNotSupportedError
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.tools.anyio_service import background_trio_service

from infernet.protocol.errors import TransportError
from infernet.protocol.ports import NODE_P2P_PORT

__all__ = [
    "DEFAULT_PORT",
    "GOSSIPSUB_PROTOCOL",
    "MeshHost",
    "ProtocolNotOffered",
    "lone_exception",
    "open_host",
    "parse_peer_multiaddr",
]

log = logging.getLogger("infernet.mesh")

DEFAULT_PORT: Final = NODE_P2P_PORT
GOSSIPSUB_PROTOCOL: Final = TProtocol("/meshsub/1.1.0")
DIAL_TIMEOUT: Final = 10.0

DisconnectHandler = Callable[[str], Awaitable[None]]


def _patch_libp2p_globals() -> None:
    # Module-level state in libp2p; idempotent. Done when a host opens, never at import time.
    _swarm._HAPPY_EYEBALLS_DELAY = 0
    # Read by yamux at call time. Measured with bench.gateway_instant at saturation: ~12 %
    # less CPU per job in both the coordinator and the node. An operator's setting wins.
    os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")
    # `import libp2p` cuts its logger off (propagate=False, no handlers): send its records
    # to whatever the application configured; the CLI filters them by level.
    logging.getLogger("libp2p").propagate = True


def parse_peer_multiaddr(addr: str) -> tuple[str, multiaddr.Multiaddr]:
    """Split ``/ip4/.../tcp/N/p2p/PEERID`` into (peer id string, multiaddr).

    Raises:
        TransportError: the address is malformed or has no ``/p2p/`` part (code bad_request).
    """
    try:
        ma = multiaddr.Multiaddr(addr)
        info = info_from_p2p_addr(ma)
    except Exception as exc:  # multiaddr raises a zoo of types for bad input
        raise TransportError(f"bad peer multiaddr {addr!r}: {exc}", code="bad_request") from None
    return info.peer_id.to_base58(), ma


class _Notifee(INotifee):
    def __init__(self, owner: MeshHost) -> None:
        self._owner = owner

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        await self._owner._on_connected(conn)

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        await self._owner._on_disconnected(conn)

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


class MeshHost:
    """A running libp2p host plus its gossipsub; created by `open_host`."""

    def __init__(self, host: Any, pubsub: Pubsub, max_connections: int) -> None:
        self.host = host
        self.pubsub = pubsub
        self.max_connections = max_connections
        self._disconnect_handlers: list[DisconnectHandler] = []
        # Secured sessions of every connection ever opened: 0.8.1's close path can leave the
        # TCP socket open, so `open_host` closes these itself on exit (weakly held).
        self._sessions: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def peer_id(self) -> str:
        """This host's peer id (base58)."""
        return str(self.host.get_id().to_base58())

    def listen_addrs(self) -> list[str]:
        """Full multiaddrs (with ``/p2p/``) this host listens on."""
        return [str(a) for a in self.host.get_addrs()]

    def connected_peers(self) -> list[str]:
        """Peer ids with at least one open connection."""
        conns = self.host.get_network().get_connections_map()
        return [pid.to_base58() for pid, cs in conns.items() if cs]

    def is_connected(self, peer_id: str) -> bool:
        """True when at least one connection to ``peer_id`` is open."""
        return bool(self.host.get_network().get_connections(ID.from_base58(peer_id)))

    def on_disconnect(self, handler: DisconnectHandler) -> None:
        """Call ``handler(peer_id)`` when the last connection to a peer closes."""
        self._disconnect_handlers.append(handler)

    async def _on_connected(self, conn: INetConn) -> None:
        session = getattr(conn.muxed_conn, "secured_conn", None)
        if session is not None:
            self._sessions.add(session)
        total = sum(len(cs) for cs in self.host.get_network().get_connections_map().values())
        if total > self.max_connections:
            peer = conn.muxed_conn.peer_id
            log.warning("connection limit %d reached; closing %s", self.max_connections, peer)
            await conn.close()

    async def _on_disconnected(self, conn: INetConn) -> None:
        peer = conn.muxed_conn.peer_id
        if self.host.get_network().get_connections(peer):
            return
        for handler in self._disconnect_handlers:
            await handler(peer.to_base58())

    async def connect(self, addr: str, timeout: float = DIAL_TIMEOUT) -> str:
        """Dial one ``/p2p/`` multiaddr; return the peer id.

        Raises:
            TransportError: malformed address (bad_request), unreachable or timed out.
        """
        peer_id, ma = parse_peer_multiaddr(addr)
        info = info_from_p2p_addr(ma)
        network = self.host.get_network()
        # 0.8.1 negative-caches a failed peer for 60 s; our own backoff decides instead.
        if hasattr(network, "unblock_peer"):
            network.unblock_peer(info.peer_id)
        try:
            with trio.fail_after(timeout):
                await self.host.connect(info)
        except trio.TooSlowError:
            raise TransportError(f"dial {addr} timed out after {timeout:.0f}s") from None
        except Exception as exc:  # libp2p's dial errors have no common base we can rely on
            raise TransportError(f"dial {addr} failed: {exc}") from None
        return peer_id

    async def new_stream(self, peer_id: str, protocol: str, timeout: float = DIAL_TIMEOUT) -> Any:
        """Open a stream to a connected (or dialable) peer.

        Raises:
            TransportError: the peer is unreachable or refuses the protocol.
        """
        try:
            with trio.fail_after(timeout):
                return await self.host.new_stream(ID.from_base58(peer_id), [TProtocol(protocol)])
        except trio.TooSlowError:
            raise TransportError(f"opening {protocol} to {peer_id} timed out") from None
        except Exception as exc:
            if _refused_protocol(exc):
                raise ProtocolNotOffered(f"{peer_id} does not speak {protocol}") from None
            raise TransportError(f"cannot open {protocol} to {peer_id}: {exc}") from None


class ProtocolNotOffered(TransportError):
    """The peer is reachable but does not speak the protocol asked for (an older node)."""


def _refused_protocol(exc: BaseException) -> bool:
    """Whether multistream-select said "na": py-libp2p wraps it in a StreamFailure."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ProtocolNotSupportedError) or "protocol not supported" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


async def _close_all(mesh: MeshHost) -> None:
    """Close the host, then any TCP session it left open (``host.close()`` alone leaks)."""
    await mesh.host.close()
    for session in list(mesh._sessions):
        try:
            await session.close()
        except Exception as exc:  # already closed by libp2p: nothing left to release
            log.debug("closing session: %s", exc)


@asynccontextmanager
async def open_host(
    secret_key: bytes,
    *,
    listen_host: str = "0.0.0.0",
    port: int = DEFAULT_PORT,
    max_connections: int = 256,
) -> AsyncIterator[MeshHost]:
    """Start a libp2p host with gossipsub, listening on ``listen_host:port``.

    Raises:
        TransportError: the port cannot be bound.
    """
    _patch_libp2p_globals()
    key_pair = create_new_key_pair(secret_key)
    security = {
        NOISE_PROTOCOL_ID: NoiseTransport(
            key_pair, noise_privkey=create_x25519_key_pair().private_key
        )
    }
    listen = [multiaddr.Multiaddr(f"/ip4/{listen_host}/tcp/{port}")]
    conn_config = ConnectionConfig(
        max_connections=max(max_connections, 1),
        min_connections=0,
        low_watermark=0,
        high_watermark=0,
    )
    host = new_host(
        key_pair=key_pair, sec_opt=security, listen_addrs=listen, connection_config=conn_config
    )
    gossipsub = GossipSub(
        protocols=[GOSSIPSUB_PROTOCOL],
        degree=6,
        degree_low=4,
        degree_high=12,
        heartbeat_interval=1,
        spam_protection_enabled=False,
    )
    pubsub = Pubsub(host, gossipsub)
    mesh = MeshHost(host, pubsub, max_connections)
    host.get_network().register_notifee(_Notifee(mesh))
    try:
        async with host.run(listen_addrs=listen):
            host.get_network()._inbound_limiter = trio.CapacityLimiter(math.inf)  # type: ignore[attr-defined]
            async with background_trio_service(pubsub), background_trio_service(gossipsub):
                await pubsub.wait_until_ready()
                yield mesh
    except OSError as exc:
        raise TransportError(f"cannot listen on {listen_host}:{port}: {exc}") from None
    except BaseExceptionGroup as group:
        # libp2p's nurseries wrap whatever the caller's block raised in nested groups of
        # one; hand the caller back its own exception.
        raise lone_exception(group) from None
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await _close_all(mesh)


def lone_exception(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception inside nested groups of one (trio nurseries wrap what a body raised),
    or the group itself when several things failed."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc
