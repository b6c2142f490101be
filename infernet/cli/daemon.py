"""``infernet start`` (foreground and ``--detach``), ``infernet stop`` and ``infernet status``.

Owns: running the daemon in this process (pid file, log file, drain on the first
SIGTERM/SIGINT once the node serves, cancel before), spawning it in the background with its
output appended to the log file and waiting until its control port answers, and the client
side of the control API (`infernet.node.control`) that ``status``, ``stop``, ``doctor`` and
``remove`` use.

Exit codes: ``status`` 0 when a node answers (serving or draining), 1 when none runs or it
is still starting; ``stop`` 0 once the node is gone or when none was running, 1 when it is
still running at the deadline; ``start --detach`` 0 once the node serves, 1 when it died or
did not answer in time (it is then left running; see ``infernet logs``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import trio

from infernet.cli.heap import settle_heap
from infernet.cli.logs import setup_logging
from infernet.cli.signals import run_until_signal
from infernet.node.config import ConfigError, NodeConfig, load_config, load_node_key
from infernet.node.runfiles import (
    clear_run_files,
    log_file_path,
    pid_alive,
    read_control,
    read_pid,
    write_pid,
)
from infernet.protocol.errors import InfernetError

__all__ = [
    "add_daemon_commands",
    "add_start_options",
    "check_bootstrap",
    "fetch_status",
    "run_start",
    "stop_node",
]

STATUS_TIMEOUT: Final = 5.0
POLL: Final = 0.1
START_WAIT: Final = 300.0  # the first start assembles the ~240 MB embedded model


def add_start_options(start: argparse.ArgumentParser) -> None:
    """The daemon options of ``start`` (the rest are registered in ``main``)."""
    start.add_argument("--detach", action="store_true",
                       help="run in the background; output goes to the log file")
    start.add_argument("--wait", type=float, default=START_WAIT, metavar="SECONDS",
                       help=f"with --detach: how long to wait until it serves (default "
                       f"{START_WAIT:.0f})")
    start.add_argument("--json", action="store_true",
                       help="with --detach: print the started node's status as JSON")
    start.add_argument("--daemon-child", action="store_true", help=argparse.SUPPRESS)


def add_daemon_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status`` and ``stop``."""
    status = sub.add_parser("status", help="show the running node's state")
    status.add_argument("--json", action="store_true", help="print the status document")
    status.set_defaults(func=_cmd_status)
    stop = sub.add_parser("stop", help="stop the node: finish jobs in flight, then exit")
    stop.add_argument("--timeout", type=float, metavar="SECONDS",
                      help="how long to wait for it to exit (default: drain_timeout + 30)")
    stop.add_argument("--json", action="store_true", help="print the outcome as JSON")
    stop.set_defaults(func=_cmd_stop)


# -- the control API, client side ------------------------------------------------------------

def fetch_status(home: Path) -> dict[str, Any] | None:
    """The running node's ``GET /status`` document, or None when no node answers."""
    endpoint = read_control(home)
    if endpoint is None:
        return None
    try:
        r = httpx.get(f"{endpoint.url}/status", timeout=STATUS_TIMEOUT)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    doc: dict[str, Any] = r.json()
    return doc


def _request_stop(home: Path) -> int | None:
    """Ask the node to drain; return its pid, or None when no node runs."""
    endpoint = read_control(home)
    if endpoint is not None:
        try:
            r = httpx.post(f"{endpoint.url}/stop", timeout=STATUS_TIMEOUT,
                           headers={"Authorization": f"Bearer {endpoint.token}"})
            if r.status_code == 202:
                return endpoint.pid
        except httpx.HTTPError:
            pass  # not answering: fall back to the signal, which drains the same way
    pid = read_pid(home) or (endpoint.pid if endpoint else None)
    if pid is None:
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return None
    return pid


def stop_node(home: Path, timeout: float) -> tuple[int | None, bool]:
    """Stop the node under ``home``; return (its pid or None, whether it is gone)."""
    pid = _request_stop(home)
    if pid is None:
        return None, True
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return pid, False
        time.sleep(POLL)
    return pid, True


# -- status / stop ---------------------------------------------------------------------------

def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    return f"{_span(seconds)} ago"


def _span(seconds: float) -> str:
    s = int(seconds)
    d, h, m = s // 86400, s % 86400 // 3600, s % 3600 // 60
    if d:
        return f"{d}d {h}h {m}m"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s % 60}s" if m else f"{s}s"


def render_status(doc: dict[str, Any]) -> str:
    """The human form of a status document."""
    backend = doc["backend"]
    jobs = doc["jobs"]
    rows = [
        ("Node", doc["npub"]),
        ("Node id", doc["node_id"]),
        ("Peer id", doc["peer_id"]),
        ("Status", f"{'online' if doc['online'] else doc['state']} (pid {doc['pid']}, "
                   f"infernet {doc['version']})"),
        ("Uptime", _span(doc["uptime_s"])),
        ("Backend", f"{backend['name']}{' at ' + backend['url'] if backend['url'] else ''} "
                    f"({'healthy' if backend['healthy'] else 'NOT HEALTHY'})"),
        ("Models", ", ".join(doc["models"]) or "none"),
        ("Slots", f"{doc['slots']['free']} of {doc['slots']['total']} free"),
        ("Peers", f"{doc['peers']['connected']} connected, {doc['peers']['online']} online"),
        ("Jobs", f"{jobs['completed']} completed, {jobs['running']} running, "
                 f"{jobs['failed']} failed, {jobs['refused']} refused, "
                 f"{jobs['relayed']} relayed"),
        ("Tokens", f"{doc['tokens']['prompt']} prompt, {doc['tokens']['completion']} "
                   "completion"),
        ("Earnings", _earnings(doc.get("earnings"))),
        ("Announced", _ago(doc["last_announcement_age_s"])),
        ("Listening", "\n".ljust(13).join(doc["listen_addrs"]) or "-"),
        ("Control", f"http://127.0.0.1:{doc['control_port']} (/status, /metrics)"),
        ("Log", doc["log_file"] or "-"),
    ]
    return "\n".join(f"{name + ':':<12} {value}" for name, value in rows)


def _earnings(earnings: dict[str, Any] | None) -> str:
    """``12.84 USDC unclaimed (checked 2m ago)`` and the receipts by state."""
    if not earnings:
        return "-"
    r = earnings["receipts"]
    if earnings["unclaimed"] is not None:
        checked = earnings["unclaimed_checked_at"]
        head = (f"{earnings['unclaimed']} USDC unclaimed (coordinator, checked "
                f"{_ago(time.time() - checked) if checked else 'never'})")
    elif earnings["coordinator_url"]:
        head = "unclaimed balance not known yet (coordinator not reached)"
    else:
        head = "no coordinator configured (receipts are kept locally)"
    return (f"{head}\n{'':13}receipts: {r['pending']} pending, {r['countersigned']} "
            f"countersigned ({earnings['countersigned_value']} USDC), {r['unwitnessed']} "
            f"unwitnessed, {r['rejected']} rejected")


def _cmd_status(args: argparse.Namespace, home: Path) -> int:
    doc = fetch_status(home)
    if doc is not None:
        print(json.dumps(doc, indent=2) if args.json else render_status(doc))
        return 0
    pid = read_pid(home)
    state = "starting" if pid is not None else "stopped"
    if args.json:
        print(json.dumps({"state": state, "online": False, "pid": pid}))
    elif pid is not None:
        print(f"The node is starting (pid {pid}) and not serving yet; follow it with "
              "`infernet logs -f`.")
    else:
        print("The node is not running; start it with `infernet start --detach`.")
    return 1


def _cmd_stop(args: argparse.Namespace, home: Path) -> int:
    timeout = args.timeout
    if timeout is None:
        timeout = _drain_timeout(home) + 30
    pid, gone = stop_node(home, timeout)
    if args.json:
        print(json.dumps({"pid": pid, "was_running": pid is not None, "stopped": gone}))
    elif pid is None:
        print("The node is not running.")
    elif gone:
        print(f"Stopped the node (pid {pid}).")
    else:
        print(f"The node (pid {pid}) is still running after {timeout:.0f} s (jobs still "
              f"draining?); run `infernet stop` again or `kill {pid}`.")
    return 0 if gone else 1


def _drain_timeout(home: Path) -> float:
    try:
        return load_config(home).drain_timeout
    except ConfigError:
        return NodeConfig().drain_timeout


# -- start -----------------------------------------------------------------------------------

def check_bootstrap(addrs: Sequence[str]) -> None:
    """Refuse malformed bootstrap addresses before anything starts.

    Raises:
        ConfigError: an address is not ``/ip4|ip6|dns…/tcp/PORT/p2p/PEER_ID`` (exit code 2).
    """
    from infernet.mesh.host import parse_peer_multiaddr  # imports libp2p: only when needed

    for addr in addrs:
        try:
            parse_peer_multiaddr(addr)
        except InfernetError as exc:
            raise ConfigError(f"{exc}; a bootstrap address looks like "
                              "/ip4/1.2.3.4/tcp/46337/p2p/16Uiu2HA… (fix --bootstrap or the "
                              "config's bootstrap list)") from None


def run_start(home: Path, config: NodeConfig, args: argparse.Namespace,
              argv: Sequence[str]) -> int:
    """Run ``infernet start``: in this process, or (``--detach``) in the background.

    Raises:
        ConfigError: the key or config is unusable (exit code 2).
        InfernetError: a node already runs, or the daemon failed.
    """
    key = load_node_key(home)
    check_bootstrap(config.bootstrap)
    running = read_pid(home)
    if running is not None and running != os.getpid():
        raise InfernetError(f"a node is already running from {home} (pid {running}); stop it "
                            "with `infernet stop` first")
    log_path = log_file_path(home, config.log_file)
    if args.detach:
        return _detach(home, log_path, argv, args)
    try:
        setup_logging(verbose=args.verbose, log_file=log_path, terminal=not args.daemon_child,
                      capture_stdio=args.daemon_child)
    except OSError as exc:
        raise ConfigError(f"cannot write the log file {log_path} ({exc.strerror}); fix its "
                          "permissions or set log_file in the config") from None
    write_pid(home)
    try:
        return _run_foreground(home, config, key)
    finally:
        clear_run_files(home)


def _run_foreground(home: Path, config: NodeConfig, key: Any) -> int:
    from infernet.node.daemon import run_node

    stop = trio.Event()
    serving = False

    def on_signal() -> Literal["draining", "cancel"]:
        # While the engine starts there is nothing to drain: cancel the start instead.
        if not serving:
            return "cancel"
        stop.set()
        return "draining"

    async def main(scope: trio.CancelScope) -> None:
        nonlocal serving
        async with trio.open_nursery() as nursery:
            await nursery.start(partial(run_node, home, config, key, stop=stop))
            serving = True
            settle_heap()

    return trio.run(run_until_signal, main, on_signal)


def _child_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` without the options that only the launching process uses."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--detach", "--json"):
            continue
        elif arg == "--wait":
            skip = True
        elif not arg.startswith("--wait="):
            out.append(arg)
    return [sys.executable, "-m", "infernet.cli.main", *out, "--daemon-child"]


def _detach(home: Path, log_path: Path, argv: Sequence[str], args: argparse.Namespace) -> int:
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log = log_path.open("ab")
    except OSError as exc:
        raise ConfigError(f"cannot write the log file {log_path} ({exc.strerror}); fix its "
                          "permissions or set log_file in the config") from None
    with log:
        offset = log.tell()
        child = subprocess.Popen(_child_argv(argv), stdin=subprocess.DEVNULL, stdout=log,
                                 stderr=log, start_new_session=True)
    deadline = time.monotonic() + args.wait
    while True:
        code = child.poll()
        if code is not None:
            tail = _tail_since(log_path, offset)
            raise InfernetError(f"the node exited during start (code {code}); its log "
                                f"({log_path}) ends with:\n{tail}")
        doc = fetch_status(home)
        if doc is not None and doc.get("pid") == child.pid:
            break
        if time.monotonic() > deadline:
            raise InfernetError(f"the node (pid {child.pid}) did not serve within "
                                f"{args.wait:.0f} s; it is still starting: follow it with "
                                "`infernet logs -f`, stop it with `infernet stop`",
                                code="timeout")
        time.sleep(POLL)
    if args.json:
        print(json.dumps({"pid": child.pid, "log_file": str(log_path), "status": doc}))
    else:
        print(f"Node started in the background (pid {child.pid}), serving "
              f"{', '.join(doc['models']) or 'no models'}.")
        print(f"Logs:   {log_path}  (`infernet logs -f`)")
        print("Status: `infernet status`    Stop: `infernet stop`")
    return 0


def _tail_since(path: Path, offset: int, lines: int = 15) -> str:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(nothing)"
