"""``infernet doctor``: check everything a node needs, and say how to fix what is wrong.

Owns: the checks (config and key files and their modes, the running node, the engine and
whether its models match ``served_models``, the VRAM fit of served models with headroom
(`infernet.backends.fit`'s rule), the listen and control ports, disk space, the log file, the
coordinator and the clock against it, the GPU and its driver/CUDA version
(`infernet.node.gpu_driver`), mDNS), each ending ``[OK]``, ``[WARN]`` or ``[FAIL]`` with a
one-line fix, and the exit code: 1 when any check fails, else 0. ``--json`` prints the same
as one document. Sizes are in GiB, as everywhere in the CLI.

A CPU-only node is valid (the embedded engine serves on CPU): no GPU is a warning; a GPU
whose driver does not work is a failure.

A check never raises: what it could not find out is its result. The engine and hardware
checks use `infernet.backends.select` and `infernet.node.hardware` when this build has them
(imported lazily: both are optional parts of a build).
"""

from __future__ import annotations

import argparse
import email.utils
import importlib
import importlib.util
import json
import os
import platform
import shutil
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

import httpx
import trio

from infernet import __version__
from infernet.cli.daemon import fetch_status
from infernet.node.config import (
    NODE_KEY_FILE,
    ConfigError,
    NodeConfig,
    config_path,
    load_config,
    load_node_key,
    loose_permissions,
)
from infernet.node.runfiles import log_file_path, read_pid
from infernet.protocol.errors import InfernetError

__all__ = ["Check", "add_doctor_command", "run_checks"]

Status = Literal["ok", "warn", "fail"]
GIB: Final = 1024**3
DISK_FAIL_GIB: Final = 1
DISK_WARN_GIB: Final = 20
MAX_SKEW_S: Final = 30.0
HTTP_TIMEOUT: Final = 5.0
LABELS: Final[dict[Status, str]] = {"ok": "[OK]  ", "warn": "[WARN]", "fail": "[FAIL]"}


@dataclass(frozen=True, slots=True)
class Check:
    """One result: what was checked, how it went, what was found, and the fix."""

    name: str
    status: Status
    detail: str
    fix: str = ""


@dataclass
class _Context:
    home: Path
    config: NodeConfig
    status: dict[str, Any] | None = None
    hardware: Any = None  # infernet.node.hardware.HardwareInfo when this build detects it
    engine: Any = None  # infernet.cli.recommend.EngineSurvey of a reachable engine
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: Status, detail: str, fix: str = "") -> None:
        self.checks.append(Check(name, status, detail, fix))


def add_doctor_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``doctor``."""
    doctor = sub.add_parser("doctor", help="diagnose this node's setup")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.set_defaults(func=_cmd_doctor)


# -- files -----------------------------------------------------------------------------------

def _check_config(ctx: _Context) -> None:
    path = config_path(ctx.home)
    if not path.exists():
        ctx.add("Config", "warn", f"{path} does not exist: using defaults",
                "run `infernet init`")
        return
    try:
        ctx.config = load_config(ctx.home)
    except ConfigError as exc:
        ctx.add("Config", "fail", str(exc), f"fix or delete {path}")
        return
    loose = loose_permissions(path)
    if loose:
        ctx.add("Config", "warn", f"{path} is {loose}", f"chmod 600 {path}")
    else:
        ctx.add("Config", "ok", str(path))


def _check_keys(ctx: _Context) -> None:
    path = ctx.home / NODE_KEY_FILE
    if not path.exists():
        ctx.add("Node key", "fail", f"{path} is missing", "run `infernet init`")
        return
    try:
        key = load_node_key(ctx.home)
    except ConfigError as exc:
        ctx.add("Node key", "fail", str(exc), f"chmod 600 {path}, or restore it from a backup")
        return
    from infernet.protocol.keys import encode_npub

    ctx.add("Node key", "ok", f"present, mode 0600 ({encode_npub(key.public_key)})")
    loose = loose_permissions(path.parent)
    if loose:
        ctx.add("Key directory", "warn", f"{path.parent} is {loose}",
                f"chmod 700 {path.parent}")


def _check_log(ctx: _Context) -> None:
    path = log_file_path(ctx.home, ctx.config.log_file)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if _can_append(path) if path.exists() else _can_create(folder):
        ctx.add("Log file", "ok", str(path))
    else:
        ctx.add("Log file", "fail", f"{path} is not writable",
                "fix its permissions, or set log_file with `infernet config set log_file PATH`")


def _can_append(path: Path) -> bool:
    try:
        with path.open("ab"):
            return True
    except OSError:
        return False


def _can_create(folder: Path) -> bool:
    return os.access(folder, os.W_OK | os.X_OK)


def _check_disk(ctx: _Context) -> None:
    from infernet.backends.fit import format_size

    folder = ctx.home
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    shown = f"{format_size(free)} free on {folder}"
    if free < DISK_FAIL_GIB * GIB:
        ctx.add("Disk space", "fail", shown, "free some space: models and logs need room")
    elif free < DISK_WARN_GIB * GIB:
        ctx.add("Disk space", "warn", f"{shown} (at least {DISK_WARN_GIB} GiB recommended for "
                "models)", "free some space before installing larger models")
    else:
        ctx.add("Disk space", "ok", shown)


# -- the node and its engine -----------------------------------------------------------------

def _check_node(ctx: _Context) -> None:
    ctx.status = fetch_status(ctx.home)
    doc = ctx.status
    if doc is not None:
        ctx.add("Node", "ok", f"{doc['state']} (pid {doc['pid']}), {len(doc['models'])} "
                f"model(s), {doc['peers']['connected']} peer(s) connected")
        return
    pid = read_pid(ctx.home)
    if pid is not None:
        ctx.add("Node", "warn", f"starting (pid {pid}), not serving yet",
                "wait, and follow it with `infernet logs -f`")
    else:
        ctx.add("Node", "warn", "not running", "start it with `infernet start --detach`")


def _check_backend(ctx: _Context) -> None:
    doc = ctx.status
    if doc is not None:
        backend = doc["backend"]
        if backend["healthy"]:
            ctx.add("Backend", "ok", f"{backend['name']} healthy (reported by the node); "
                    f"serving {', '.join(doc['models']) or 'no model'}")
        else:
            ctx.add("Backend", "fail", f"{backend['name']} is not answering its health check",
                    "see `infernet logs`; restart the engine or the node")
        _check_models(ctx, doc["models"])
        return
    try:
        select = importlib.import_module("infernet.backends.select")
    except ImportError:
        ctx.add("Backend", "warn", f"backend={ctx.config.backend}: this build cannot probe "
                "engines", "start the node and run doctor again")
        return
    result = trio.run(_probe_backend, select, ctx.config)
    ctx.add(*result)
    if result[1] == "ok":
        _check_engine_models(ctx)


def _check_engine_models(ctx: _Context) -> None:
    """With no node running: does the engine have every model in served_models?"""
    from infernet.cli.recommend import survey_engine

    try:
        survey = trio.run(survey_engine, ctx.config, ctx.home, dict(os.environ))
    except InfernetError as exc:
        ctx.add("Models", "warn", f"cannot list the engine's models: {exc}",
                "check the engine's logs")
        return
    ctx.engine = survey
    served = ctx.config.served_models
    missing = [m for m in served if not survey.has(m)]
    if missing:
        how = ("install them (`infernet model install NAME`)" if survey.can_pull
               else survey.hint)
        ctx.add("Models", "warn", f"served_models lists {', '.join(missing)} but "
                f"{survey.engine} has {', '.join(survey.models) or 'no model'}",
                f"{how}, or remove them from served_models (`infernet model remove NAME`)")
    elif not served and not survey.models:
        ctx.add("Models", "warn", f"{survey.engine} has no model",
                "install one: `infernet model recommend` lists what fits")
    else:
        shown = ", ".join(served) or f"everything {survey.engine} lists"
        ctx.add("Models", "ok", f"in sync: {shown}")


async def _probe_backend(select: Any, config: NodeConfig) -> tuple[str, Status, str, str]:
    selection = await select.select_backend(config)
    if selection.kind == "embedded" and not selection.url:
        if importlib.util.find_spec("xllamacpp") is None:
            return ("Backend", "fail", "the embedded engine (xllamacpp) is not installed",
                    "reinstall infernet, or run Ollama/vLLM and set `backend`")
        return "Backend", "ok", f"embedded llama.cpp engine ({selection.reason})", ""
    healthy = [p for p in selection.probes if p.healthy]
    if healthy:
        return "Backend", "ok", f"{selection.kind} answering at {selection.url}", ""
    kind = "llamacpp" if selection.kind == "embedded" else selection.kind
    async with httpx.AsyncClient() as client:
        probe = await select.probe_engine(client, kind, selection.url, config.probe_timeout)
    if probe.healthy:
        return "Backend", "ok", f"{selection.kind} answering at {selection.url}", ""
    return ("Backend", "fail", f"{selection.kind} not reachable at {selection.url}: "
            f"{probe.detail}", f"start {selection.kind}, or set `backend`/`backend_url` "
            "(`infernet config set backend auto` falls back to the embedded engine)")


def _check_models(ctx: _Context, served: list[str]) -> None:
    if not served:
        ctx.add("Models", "warn", "the node serves no model",
                "install one with `infernet model install NAME`")
        return
    missing = sorted(set(ctx.config.served_models) - set(served))
    if missing:
        ctx.add("Models", "warn", f"served_models lists {', '.join(missing)} but the node "
                f"serves {', '.join(served)}", "install them (`infernet model install NAME`) "
                "or remove them from served_models, then restart the node")
    else:
        ctx.add("Models", "ok", f"in sync: {', '.join(served)}")


def _check_fit(ctx: _Context) -> None:
    doc, info, survey = ctx.status, ctx.hardware, ctx.engine
    if doc is not None:
        names = list(doc["models"])
        naming = _naming(doc["backend"]["name"])
    elif survey is not None:
        names = list(ctx.config.served_models or survey.models)
        naming = survey.naming
    else:
        return
    if info is None or not names:
        return  # nothing served, or this build cannot tell the machine's memory
    from infernet.backends.base import ModelInfo
    from infernet.backends.fit import check_fit

    budget = info.memory_budget_bytes or None
    verdicts = [check_fit(ModelInfo(name=name), budget, naming) for name in names]
    too_big = [v.reason for v in verdicts if not v.fits]
    if too_big:
        ctx.add("VRAM fit", "warn", "; ".join(too_big),
                "serve a smaller or more quantized variant (`infernet model recommend`)")
    else:
        memory = "VRAM" if info.vram_total_bytes else "RAM"
        ctx.add("VRAM fit", "ok", f"every served model fits in {memory} with headroom (KV "
                "cache, runtime)")


def _naming(engine: str) -> Any:
    from infernet.backends.engines import ENGINES

    spec = ENGINES.get(engine)  # type: ignore[call-overload]
    return spec.model_naming if spec is not None else "alias"


def _port_free(host: str, port: int) -> str:
    """"" when ``host:port`` can be bound now, else why not."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the node binds it
        try:
            s.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return ""


def _check_ports(ctx: _Context) -> None:
    c, doc = ctx.config, ctx.status
    mine = doc is not None and any(f"/tcp/{c.port}/" in a for a in doc["listen_addrs"])
    if mine:
        ctx.add("P2P port", "ok", f"{c.port}/tcp in use by this node")
    elif c.port == 0:
        ctx.add("P2P port", "ok", "any free port (port = 0)")
    else:
        why = _port_free(c.listen_host, c.port)
        if why:
            ctx.add("P2P port", "fail", f"{c.listen_host}:{c.port} cannot be bound ({why})",
                    "stop what uses it, or `infernet config set port N`")
        else:
            ctx.add("P2P port", "ok", f"{c.listen_host}:{c.port} is free; open {c.port}/tcp "
                    "inbound if peers should reach you directly")
    if doc is not None:
        ctx.add("Control port", "ok", f"127.0.0.1:{doc['control_port']} answering")
    elif c.control_port:
        why = _port_free("127.0.0.1", c.control_port)
        if why:
            ctx.add("Control port", "fail", f"127.0.0.1:{c.control_port} cannot be bound "
                    f"({why})", "stop what uses it, or `infernet config set control_port N`")
        else:
            ctx.add("Control port", "ok", f"127.0.0.1:{c.control_port} is free")


# -- network, clock, hardware ----------------------------------------------------------------

def _check_coordinator(ctx: _Context) -> None:
    url = ctx.config.coordinator_url.rstrip("/")
    if not url:
        ctx.add("Coordinator", "ok", "none configured: the node serves the mesh only")
        return
    start = time.time()
    try:
        r = httpx.get(f"{url}/health", timeout=HTTP_TIMEOUT)
    except httpx.HTTPError as exc:
        ctx.add("Coordinator", "fail", f"{url} not reachable ({type(exc).__name__}: {exc})",
                "check the URL (`infernet config get coordinator_url`) and your network")
        return
    end = time.time()
    if r.status_code != 200:
        ctx.add("Coordinator", "fail", f"{url}/health answered HTTP {r.status_code}",
                "check the URL points at an Infernet coordinator")
        return
    ctx.add("Coordinator", "ok", f"{url} reachable ({(end - start) * 1000:.0f} ms)")
    _check_clock(ctx, r, (start + end) / 2)


def _server_time(r: httpx.Response) -> float | None:
    try:
        doc = r.json()
    except ValueError:
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("time"), int | float):
        return float(doc["time"])
    date = r.headers.get("date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            return None
    return None


def _check_clock(ctx: _Context, r: httpx.Response, local: float) -> None:
    remote = _server_time(r)
    if remote is None:
        ctx.add("Clock", "warn", "the coordinator did not say its time",
                "keep the clock synced with NTP (signed requests allow ±30 s)")
        return
    skew = local - remote
    shown = f"{abs(skew):.1f} s {'ahead of' if skew > 0 else 'behind'} the coordinator"
    if abs(skew) > MAX_SKEW_S:
        ctx.add("Clock", "fail", f"{shown} (max {MAX_SKEW_S:.0f} s)",
                "sync the clock: enable NTP (`timedatectl set-ntp true`)")
    else:
        ctx.add("Clock", "ok", shown)


def _check_gpu(ctx: _Context) -> None:
    from infernet.node.hardware import detect_hardware

    info = detect_hardware(ctx.home if ctx.home.exists() else Path.home())
    ctx.hardware = info
    if not info.gpus:
        ctx.add("GPU", "warn", f"no GPU found: serving on CPU (tier {info.tier}; the embedded "
                "engine serves small models)", "for larger models install the GPU driver "
                "(NVIDIA: nvidia-smi must work), then run `infernet setup`")
        return
    label = info.summary().gpu_label()
    ctx.add("GPU", "ok", f"{label} via {info.gpu_source}, tier {info.tier}")


def _check_gpu_driver(ctx: _Context) -> None:
    from infernet.node.gpu_driver import MIN_CUDA, cuda_at_least, probe_driver

    report = probe_driver()
    info = ctx.hardware
    if not report.present:
        if info is not None and info.gpus:  # Apple Silicon: Metal, no driver to install
            ctx.add("GPU driver", "ok", f"{info.gpus[0].vendor} GPU, no separate driver")
        else:
            ctx.add("GPU driver", "warn", "no NVIDIA or AMD driver: a CPU-only node (valid "
                    "with the embedded engine)", "to serve on a GPU install the NVIDIA driver "
                    "(CUDA 12.1+ for vLLM/SGLang) or ROCm 5.7+, then `infernet setup`")
        return
    vendor = "NVIDIA" if report.vendor == "nvidia" else "AMD"
    if not report.usable:
        tool = "nvidia-smi" if report.vendor == "nvidia" else "rocm-smi"
        ctx.add("GPU driver", "fail", f"{vendor} GPU driver unusable: {report.detail}",
                f"(re)install the {vendor} driver for your kernel and reboot; `{tool}` "
                "must list the GPU")
        return
    runtime = "CUDA" if report.vendor == "nvidia" else "ROCm"
    shown = f"{vendor} {report.driver_version}, {runtime} {report.runtime_version or 'unknown'}"
    old_cuda = (report.vendor == "nvidia" and report.runtime_version is not None
                and not cuda_at_least(report.runtime_version))
    if old_cuda:
        ctx.add("GPU driver", "warn", f"{shown} (vLLM and SGLang need CUDA "
                f"{MIN_CUDA[0]}.{MIN_CUDA[1]}+; Ollama brings its own)",
                "update the NVIDIA driver to one that supports CUDA 12.1 or newer")
    else:
        ctx.add("GPU driver", "ok", shown)


def _check_mdns(ctx: _Context) -> None:
    if not ctx.config.mdns:
        ctx.add("mDNS", "ok", "LAN discovery is off (mdns = false)")
        return
    if importlib.util.find_spec("zeroconf") is None:
        ctx.add("mDNS", "warn", "zeroconf is not installed: no LAN discovery",
                "pip install zeroconf")
        return
    from importlib.metadata import version

    ctx.add("mDNS", "ok", f"zeroconf {version('zeroconf')} available")


CHECKS: Final[tuple[Callable[[_Context], None], ...]] = (
    _check_config, _check_keys, _check_node, _check_backend, _check_ports, _check_disk,
    _check_log, _check_coordinator, _check_gpu, _check_gpu_driver, _check_fit, _check_mdns,
)


def run_checks(home: Path) -> list[Check]:
    """Run every check for the node under ``home``, in order."""
    ctx = _Context(home=home, config=NodeConfig())
    ctx.add("Version", "ok", f"infernet {__version__} (Python {platform.python_version()})")
    for check in CHECKS:
        check(ctx)
    return ctx.checks


def _cmd_doctor(args: argparse.Namespace, home: Path) -> int:
    checks = run_checks(home)
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    if args.json:
        print(json.dumps({"ok": fails == 0, "failures": fails, "warnings": warns,
                          "checks": [{"name": c.name, "status": c.status, "detail": c.detail,
                                      "fix": c.fix} for c in checks]}, indent=2))
    else:
        print(f"Infernet node diagnostics ({home})")
        for c in checks:
            print(f"{LABELS[c.status]} {c.name}: {c.detail}")
            if c.fix and c.status != "ok":
                print(f"       fix: {c.fix}")
        summary = ("All checks passed." if not fails and not warns
                   else f"{fails} failed, {warns} warning(s).")
        print(summary)
    sys.stdout.flush()
    return 1 if fails else 0
