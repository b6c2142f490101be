"""The local control surface of a running node: status, graceful stop, Prometheus metrics.

Owns: a small HTTP/1.1 server (h11 on trio; one request per connection) bound to
127.0.0.1 on the config's ``control_port`` (default 46339; 0 picks a free port), serving

- ``GET /status``  — the node's state as JSON (the document ``infernet status --json`` prints);
- ``POST /stop``   — start a graceful drain; needs ``Authorization: Bearer <token>`` with
  the token from ``run/control.json`` (0600), so only the node's owner can stop it;
- ``GET /metrics`` — Prometheus text exposition (`infernet.node.metrics`).

It also owns the drain itself (`NodeControl.run_until_stopped`): on a stop request (HTTP, or
the CLI's SIGTERM/SIGINT handler setting the same event) new jobs are refused with
``no_capacity``, jobs in flight run to completion up to ``drain_timeout`` seconds, then it
returns and the daemon cancels whatever is left.

Invariants: loopback only; a request with a foreign ``Host`` header is refused (DNS
rebinding); requests are bounded in size and time; the run file is written only once the
port is bound and removed on exit.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Final

import h11
import msgspec
import prometheus_client
import trio
from trio_typing import TaskStatus

from infernet import __version__
from infernet.backends.base import Backend
from infernet.mesh.host import MeshHost
from infernet.mesh.peer_table import PeerTable
from infernet.node.config import NodeConfig
from infernet.node.jobs import JobExecutor
from infernet.node.metrics import JobTracker, NodeMetrics
from infernet.node.receipt_store import ReceiptQueue, ReceiptStatistics
from infernet.node.receipt_submit import ReceiptSubmitter
from infernet.node.runfiles import (
    ControlEndpoint,
    clear_run_files,
    new_control_token,
    write_control,
)
from infernet.protocol.errors import InfernetError
from infernet.protocol.keys import SecretKey, encode_npub

__all__ = ["DEFAULT_CONTROL_PORT", "NodeControl", "NodeParts"]

log = logging.getLogger("infernet.node.control")

DEFAULT_CONTROL_PORT: Final = 46339
MAX_REQUEST: Final = 16 * 1024
REQUEST_TIMEOUT: Final = 10.0
MAX_CONNECTIONS: Final = 16
HEALTH_EVERY: Final = 10.0
HEALTH_TIMEOUT: Final = 5.0
JSON: Final = "application/json"

_Response = tuple[int, str, bytes]


@dataclass(frozen=True, slots=True)
class NodeParts:
    """The running pieces the control surface reports on."""

    home: Path
    config: NodeConfig
    key: SecretKey
    backend: Backend
    executor: JobExecutor
    mesh: MeshHost
    table: PeerTable
    last_announced: Callable[[], float | None]
    receipts: ReceiptQueue | None = None  # the durable receipt queue (earnings in status)
    submitter: ReceiptSubmitter | None = None  # None: no coordinator configured


class NodeControl:
    """Serves the control HTTP API and runs the drain for one node."""

    def __init__(self, parts: NodeParts, stop: trio.Event | None = None) -> None:
        self.parts = parts
        self.stop_requested = trio.Event() if stop is None else stop
        self.metrics = NodeMetrics()
        self.jobs = JobTracker(parts.key.public_key.hex(), self.metrics)
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self.engine_healthy = True
        self.engine_checked_at: float | None = None
        self.port: int | None = None
        self._token = new_control_token()
        self._limiter = trio.CapacityLimiter(MAX_CONNECTIONS)
        self._bind_metrics()

    # -- lifecycle -------------------------------------------------------------------------

    async def serve(self, *, task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``started(port)`` once bound and the run file is written.

        Raises:
            InfernetError: the control port cannot be bound.
        """
        port = self.parts.config.control_port
        try:
            listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        except OSError as exc:
            raise InfernetError(
                f"cannot bind the control port 127.0.0.1:{port} ({exc.strerror}); is another "
                "node running (`infernet status`)? Set control_port in the config, or "
                "INFERNET_CONTROL_PORT=0 for any free port") from None
        try:
            async with trio.open_nursery() as nursery:
                self.port = int(listeners[0].socket.getsockname()[1])
                nursery.start_soon(trio.serve_listeners, self._handle, listeners)
                write_control(self.parts.home, ControlEndpoint(
                    pid=os.getpid(), port=self.port, token=self._token))
                nursery.start_soon(self._watch_engine)
                log.info("control API on http://127.0.0.1:%d (status, stop, metrics)", self.port)
                task_status.started(self.port)
        finally:
            clear_run_files(self.parts.home)

    async def run_until_stopped(self) -> None:
        """Wait for a stop request, then drain; return when it is safe to tear down.

        Cancel-safe (cancelling skips the rest of the drain).
        """
        await self.stop_requested.wait()
        self.jobs.draining = True
        # Announced at once (zero free slots), so peers and the coordinator route elsewhere.
        self.parts.executor.draining = True
        timeout = self.parts.config.drain_timeout
        if self.jobs.running:
            log.info("draining: refusing new jobs, waiting up to %.0f s for %d in flight",
                     timeout, self.jobs.running)
        with trio.move_on_after(timeout) as scope:
            await self.jobs.wait_idle()
        if scope.cancelled_caught:
            log.warning("drain deadline passed: cancelling %d job(s) still running",
                        self.jobs.running)
        else:
            log.info("drained: no job in flight; stopping")

    # -- status ----------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """The document served on ``GET /status``."""
        p = self.parts
        now = time.time()
        last = p.last_announced()
        ex = p.executor
        return {
            "node_id": p.key.public_key.hex(),
            "npub": encode_npub(p.key.public_key),
            "peer_id": p.mesh.peer_id,
            "version": __version__,
            "pid": os.getpid(),
            "state": "draining" if self.jobs.draining else "serving",
            "online": not self.jobs.draining,
            "started_at": round(self.started_at, 3),
            "uptime_s": round(time.monotonic() - self._started_mono, 3),
            "backend": {"name": p.backend.name, "url": p.config.backend_url or None,
                        "healthy": self.engine_healthy,
                        "checked_at": self.engine_checked_at},
            "models": sorted(ex.models),
            "slots": {"total": int(ex.limiter.total_tokens), "free": ex.free_slots},
            "peers": {"connected": len(p.mesh.connected_peers()),
                      "online": len(p.table.online(trio.current_time()))},
            "jobs": {**self.jobs.counts, "running": self.jobs.running},
            "tokens": {"prompt": self.jobs.prompt_tokens,
                       "completion": self.jobs.completion_tokens},
            "last_announcement_at": last,
            "last_announcement_age_s": None if last is None else round(now - last, 3),
            "listen_addrs": p.mesh.listen_addrs(),
            "advertise": p.config.advertise,
            "control_port": self.port,
            "log_file": _log_file(),
            "earnings": self._earnings(),
        }

    def _earnings(self) -> dict[str, Any]:
        """Receipts by state and what the node earned (``infernet status``, "Earnings").

        ``countersigned_value`` is the operator share of the countersigned receipts this node
        holds (all time, known locally); ``unclaimed`` is the balance the coordinator last
        reported (None until it answered), i.e. that minus what was paid out.
        """
        p = self.parts
        stats = p.receipts.statistics() if p.receipts else ReceiptStatistics()
        sub = p.submitter
        balance = sub.balance if sub is not None else None
        return {
            "currency": "USDC",
            "unclaimed": None if balance is None else _decimal(sum(balance.values(),
                                                                   Decimal(0))),
            "unclaimed_by_chain": None if balance is None else {
                chain: _decimal(v) for chain, v in sorted(balance.items())},
            "unclaimed_checked_at": sub.balance_at if sub is not None else None,
            "coordinator_url": p.config.coordinator_url or None,
            "countersigned_value": _decimal(sum(stats.earned.values(), Decimal(0))),
            "receipts": {"pending": stats.pending, "countersigned": stats.countersigned,
                         "unwitnessed": stats.unwitnessed, "rejected": stats.rejected,
                         "dropped": stats.dropped},
        }

    def _bind_metrics(self) -> None:
        p, m = self.parts, self.metrics
        m.info.info({"version": __version__, "node_id": p.key.public_key.hex(),
                     "backend": p.backend.name})
        m.start_time.set(self.started_at)
        m.bind("engine_up", lambda: float(self.engine_healthy))
        m.bind("peers_connected", lambda: len(p.mesh.connected_peers()))
        m.bind("peers_online", lambda: len(p.table.online(trio.current_time())))
        m.bind("slots_free", lambda: p.executor.free_slots)

    async def _watch_engine(self) -> None:
        while True:
            await trio.sleep(HEALTH_EVERY)  # periodic probe, not a wait for a condition
            healthy = False
            with trio.move_on_after(HEALTH_TIMEOUT):
                healthy = await self.parts.backend.health()
            if healthy != self.engine_healthy:
                log.warning("engine %s is %s", self.parts.backend.name,
                            "healthy again" if healthy else "not answering its health check")
            self.engine_healthy = healthy
            self.engine_checked_at = round(time.time(), 3)

    # -- HTTP ------------------------------------------------------------------------------

    async def _handle(self, stream: trio.SocketStream) -> None:
        async with self._limiter, stream:
            conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
            stop_after = False
            with trio.move_on_after(REQUEST_TIMEOUT):
                try:
                    request, body = await _read_request(conn, stream)
                except (h11.RemoteProtocolError, _TooLarge):
                    response = _json(400, {"error": "bad request"})
                else:
                    if request is None:
                        return  # closed before a whole request: nothing to answer
                    response, stop_after = self._route(request, body)
                # A client that went away before the answer needs nothing more.
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await _send_response(conn, stream, response)
            if stop_after:
                # After the answer went out: the drain may tear this server down at once.
                self.stop_requested.set()

    def _route(self, request: h11.Request, body: bytes) -> tuple[_Response, bool]:
        headers = {k.decode().lower(): v.decode(errors="replace") for k, v in request.headers}
        host = headers.get("host", "").rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            return _json(403, {"error": "forbidden host"}), False
        method, path = request.method.decode(), request.target.decode().split("?", 1)[0]
        if path == "/status" and method == "GET":
            return _json(200, self.status()), False
        if path == "/metrics" and method == "GET":
            data = prometheus_client.generate_latest(self.metrics.registry)
            return (200, prometheus_client.CONTENT_TYPE_LATEST, data), False
        if path == "/stop" and method == "POST":
            token = headers.get("authorization", "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(token.encode(), self._token.encode()):
                return _json(401, {"error": "unauthorized: send the token from "
                                            "run/control.json as a bearer token"}), False
            log.info("stop requested over the control API")
            return _json(202, {"state": "draining", "running_jobs": self.jobs.running,
                               "drain_timeout_s": self.parts.config.drain_timeout}), True
        if path in ("/status", "/metrics", "/stop"):
            return _json(405, {"error": f"method {method} not allowed on {path}"}), False
        return _json(404, {"error": f"no such endpoint {path}"}), False


class _TooLarge(Exception):
    """The request body is larger than `MAX_REQUEST`."""


def _decimal(amount: Decimal) -> str:
    return format(amount.normalize(), "f") if amount else "0"


def _log_file() -> str | None:
    """The file the process logs to (the CLI configured it), if any."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            return handler.baseFilename
    return None


def _json(status: int, doc: dict[str, Any]) -> _Response:
    return status, JSON, msgspec.json.encode(doc) + b"\n"


async def _read_request(conn: h11.Connection, stream: trio.SocketStream
                        ) -> tuple[h11.Request | None, bytes]:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await stream.receive_some(4096))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_REQUEST:
                raise _TooLarge
        elif isinstance(event, h11.EndOfMessage):
            return request, bytes(body)
        else:  # ConnectionClosed or PAUSED before a whole request: nothing to answer
            return None, b""


async def _send_response(conn: h11.Connection, stream: trio.SocketStream,
                         response: _Response) -> None:
    status, ctype, payload = response
    headers = [("content-type", ctype), ("content-length", str(len(payload))),
               ("connection", "close")]
    await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)) or b"")
    await stream.send_all(conn.send(h11.Data(data=payload)) or b"")
    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
