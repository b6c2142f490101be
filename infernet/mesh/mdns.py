"""LAN discovery with mDNS (zeroconf): peers on one network find and dial each other.

Owns: registering this host as ``<peer id>._infernet._tcp.local.`` with its TCP port and
addresses, browsing for the others, and dialling every new one. zeroconf is thread-based:
its callbacks only hand names to trio (``trio.from_thread``) through a bounded channel;
resolving and dialling happen in trio, with timeouts.

Invariants: only IPv4 addresses the host actually listens on are advertised; a peer found
twice is dialled once while connected; the service is unregistered on exit (shielded).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any, Final

import multiaddr
import trio
from trio_typing import TaskStatus
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf

from infernet.mesh.host import MeshHost
from infernet.protocol.errors import TransportError

__all__ = ["SERVICE_TYPE", "MdnsDiscovery"]

log = logging.getLogger("infernet.mesh.mdns")

SERVICE_TYPE: Final = "_infernet._tcp.local."
RESOLVE_TIMEOUT_MS: Final = 2000


class _Listener(ServiceListener):
    """Runs on zeroconf's thread: forwards service names to trio, never blocks."""

    def __init__(self, tx: trio.MemorySendChannel[str], token: trio.lowlevel.TrioToken) -> None:
        self._tx = tx
        self._token = token

    def _forward(self, name: str) -> None:
        def send() -> None:
            with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
                self._tx.send_nowait(name)

        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(send, trio_token=self._token)

    def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._forward(name)

    def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        self._forward(name)

    def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
        return None


def _listen_ipv4(mesh: MeshHost) -> tuple[list[str], int]:
    ips: list[str] = []
    port = 0
    for addr in mesh.host.get_addrs():
        ip, tcp = addr.value_for_protocol("ip4"), addr.value_for_protocol("tcp")
        if ip and tcp:
            ips.append(str(ip))
            port = int(tcp)
    return ips, port


class MdnsDiscovery:
    """Advertise this host and dial peers found on the LAN."""

    def __init__(self, mesh: MeshHost) -> None:
        self._mesh = mesh
        self.found: set[str] = set()

    async def serve(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run discovery until cancelled.

        Raises:
            TransportError: the host listens on no IPv4 address to advertise.
        """
        ips, port = _listen_ipv4(self._mesh)
        if not ips:
            raise TransportError("mDNS: the host listens on no IPv4 address", code="bad_request")
        own = f"{self._mesh.peer_id}.{SERVICE_TYPE}"
        info = ServiceInfo(SERVICE_TYPE, own, port=port,
                           addresses=[socket.inet_aton(ip) for ip in ips],
                           properties={"p2p": self._mesh.peer_id})
        interfaces: Any = ips if "0.0.0.0" not in ips else None
        zc = await trio.to_thread.run_sync(
            lambda: Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
            if interfaces else Zeroconf(ip_version=IPVersion.V4Only))
        tx, rx = trio.open_memory_channel[str](64)
        try:
            # The instance name is our peer id, unique by construction: skip the ~1 s of
            # name-conflict probing so peers appear within the 2 s the mesh promises.
            await trio.to_thread.run_sync(
                lambda: zc.register_service(info, cooperating_responders=True))
            browser = ServiceBrowser(zc, SERVICE_TYPE,
                                     _Listener(tx, trio.lowlevel.current_trio_token()))
            task_status.started()
            async with rx:
                async for name in rx:
                    if name != own:
                        await self._dial(zc, name)
            browser.cancel()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(3):
                await trio.to_thread.run_sync(zc.close)

    async def _dial(self, zc: Zeroconf, name: str) -> None:
        info = await trio.to_thread.run_sync(
            lambda: zc.get_service_info(SERVICE_TYPE, name, timeout=RESOLVE_TIMEOUT_MS))
        raw = info.properties.get(b"p2p") if info is not None else None
        if info is None or not raw:
            return
        peer_id = raw.decode(errors="replace")
        if self._mesh.is_connected(peer_id):
            return
        for ip in info.parsed_addresses(IPVersion.V4Only):
            addr = f"/ip4/{ip}/tcp/{info.port}/p2p/{peer_id}"
            try:
                multiaddr.Multiaddr(addr)
                await self._mesh.connect(addr, timeout=5)
            except (TransportError, ValueError) as exc:
                log.debug("mDNS peer %s at %s: %s", peer_id, addr, exc)
                continue
            self.found.add(peer_id)
            log.info("mDNS: connected to %s at %s", peer_id, addr)
            return
