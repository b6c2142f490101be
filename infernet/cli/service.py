"""``infernet service install|start|stop|restart|status|uninstall``: run the node at boot.

Owns: rendering a systemd unit (Linux) or a launchd property list (macOS) that runs
``infernet start`` in the foreground under the service manager, where it goes (system scope
when run as root, user scope otherwise; ``--system``/``--user`` choose), and driving
``systemctl``/``launchctl`` for the other verbs.

Decisions: the unit runs this very interpreter (``python -m infernet.cli.main start``) so a
virtualenv install works; ``INFERNET_HOME`` is written into the unit only when it is set
here (otherwise the service user's default home and log location apply); stop sends SIGTERM
to the daemon alone (systemd ``KillMode=mixed``), which drains, and the manager's stop
timeout is ``drain_timeout`` + 30 s. ``--dir DIR`` (or ``$INFERNET_SERVICE_DIR``) writes or
removes the file in DIR without touching the service manager (packaging, tests).
"""

from __future__ import annotations

import argparse
import json
import os
import plistlib
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from infernet.node.config import ConfigError, NodeConfig, load_config
from infernet.protocol.errors import InfernetError

__all__ = [
    "ServiceUnit",
    "add_service_commands",
    "default_manager",
    "default_scope",
    "manager_commands",
    "render_launchd",
    "render_systemd",
    "run_manager",
    "service_unit",
    "service_unit_without_config",
]

Manager = Literal["systemd", "launchd"]
Scope = Literal["system", "user"]
UNIT_NAME: Final = "infernet.service"
LABEL: Final = "org.infernet.node"
COMMAND_TIMEOUT: Final = 60.0


@dataclass(frozen=True, slots=True)
class ServiceUnit:
    """One service definition: which manager, which scope, where it goes, what it says."""

    manager: Manager
    scope: Scope
    path: Path
    content: bytes


def add_service_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``service`` and its verbs."""
    service = sub.add_parser("service", help="run the node as a system service (boot start)")
    verbs = service.add_subparsers(dest="action", required=True, metavar="ACTION")
    helps = {"install": "write the unit and enable it at boot", "start": "start the service",
             "stop": "stop the service (the node drains first)", "restart": "restart it",
             "status": "show the service state", "uninstall": "disable and remove the unit"}
    for verb, text in helps.items():
        p = verbs.add_parser(verb, help=text)
        scope = p.add_mutually_exclusive_group()
        scope.add_argument("--system", dest="scope", action="store_const", const="system",
                           help="system-wide service (default when run as root)")
        scope.add_argument("--user", dest="scope", action="store_const", const="user",
                           help="per-user service (default otherwise)")
        p.add_argument("--manager", choices=["systemd", "launchd"],
                       help="default: launchd on macOS, systemd elsewhere")
        p.add_argument("--json", action="store_true", help="print the outcome as JSON")
        if verb in ("install", "uninstall", "status"):
            p.add_argument("--dir", type=Path, metavar="DIR",
                           default=os.environ.get("INFERNET_SERVICE_DIR") or None,
                           help="only write/remove the file in DIR; leave the service "
                           "manager alone")
        p.set_defaults(func=_cmd_service)


def _quote_systemd(arg: str) -> str:
    # systemd splits ExecStart like a shell (with its own % specifiers): quote and escape.
    arg = arg.replace("%", "%%")
    return f'"{arg}"' if any(c in arg for c in " \t\"'\\") else arg


def render_systemd(argv: list[str], env: dict[str, str], scope: Scope,
                   stop_timeout: float) -> str:
    """A systemd unit running ``argv`` in the foreground."""
    lines = ["[Unit]", "Description=Infernet inference node"]
    if scope == "system":
        lines += ["After=network-online.target", "Wants=network-online.target"]
    lines += ["", "[Service]", "Type=simple",
              "ExecStart=" + " ".join(_quote_systemd(a) for a in argv)]
    lines += [f"Environment={_quote_systemd(f'{k}={v}')}" for k, v in sorted(env.items())]
    lines += [
        "Restart=on-failure",
        "RestartSec=5",
        "# SIGTERM to the daemon only: it drains its jobs and stops the engine itself.",
        "KillMode=mixed",
        "KillSignal=SIGTERM",
        f"TimeoutStopSec={int(stop_timeout)}",
        "NoNewPrivileges=yes",
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if scope == 'system' else 'default.target'}",
        "",
    ]
    return "\n".join(lines)


def render_launchd(argv: list[str], env: dict[str, str], output: Path,
                   stop_timeout: float) -> bytes:
    """A launchd property list running ``argv``, restarted when it fails."""
    plist = {
        "Label": LABEL,
        "ProgramArguments": argv,
        "EnvironmentVariables": env,
        "RunAtLoad": True,
        "KeepAlive": {"SuccessfulExit": False},
        "ExitTimeOut": int(stop_timeout),
        "StandardOutPath": str(output),
        "StandardErrorPath": str(output),
        "ProcessType": "Background",
    }
    return plistlib.dumps(plist)


def default_manager() -> Manager:
    """launchd on macOS, systemd elsewhere."""
    return "launchd" if sys.platform == "darwin" else "systemd"


def default_scope() -> Scope:
    """System scope for root, user scope otherwise."""
    return "system" if hasattr(os, "geteuid") and os.geteuid() == 0 else "user"


def _unit_dir(manager: Manager, scope: Scope) -> Path:
    if manager == "launchd":
        return (Path("/Library/LaunchDaemons") if scope == "system"
                else Path.home() / "Library" / "LaunchAgents")
    if scope == "system":
        return Path("/etc/systemd/system")
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "systemd" / "user"


def service_unit(home: Path, manager: Manager, scope: Scope,
                 directory: Path | None = None) -> ServiceUnit:
    """The unit for the node under ``home``.

    Raises:
        ConfigError: the config is invalid (exit code 2).
    """
    config: NodeConfig = load_config(home)
    argv = [sys.executable, "-m", "infernet.cli.main", "start"]
    env = {"PYTHONUNBUFFERED": "1"}
    if os.environ.get("INFERNET_HOME"):
        env["INFERNET_HOME"] = str(home.resolve())
    stop_timeout = config.drain_timeout + 30
    folder = directory or _unit_dir(manager, scope)
    if manager == "launchd":
        content = render_launchd(argv, env, home.resolve() / "logs" / "launchd.log",
                                 stop_timeout)
        return ServiceUnit(manager, scope, folder / f"{LABEL}.plist", content)
    content = render_systemd(argv, env, scope, stop_timeout).encode()
    return ServiceUnit(manager, scope, folder / UNIT_NAME, content)


def run_manager(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run one service-manager command (never through a shell).

    Raises:
        InfernetError: the tool is missing or hangs.
    """
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
                              check=False)
    except FileNotFoundError:
        raise InfernetError(f"{argv[0]} not found: this system has no {argv[0]}; run the "
                            "node with `infernet start --detach`, or write the unit with "
                            "--dir and install it by hand") from None
    except subprocess.TimeoutExpired:
        raise InfernetError(f"`{shlex.join(argv)}` did not finish in {COMMAND_TIMEOUT:.0f} s",
                            code="timeout") from None


def manager_commands(unit: ServiceUnit, verb: str) -> list[list[str]]:
    """The ``systemctl``/``launchctl`` calls that carry out ``verb`` for ``unit``."""
    if unit.manager == "systemd":
        ctl = ["systemctl"] + (["--user"] if unit.scope == "user" else [])
        return {
            "install": [[*ctl, "daemon-reload"], [*ctl, "enable", UNIT_NAME]],
            "start": [[*ctl, "start", UNIT_NAME]],
            "stop": [[*ctl, "stop", UNIT_NAME]],
            "restart": [[*ctl, "restart", UNIT_NAME]],
            "status": [[*ctl, "status", "--no-pager", UNIT_NAME]],
            "uninstall": [[*ctl, "disable", "--now", UNIT_NAME], [*ctl, "daemon-reload"]],
        }[verb]
    domain = "system" if unit.scope == "system" else f"gui/{os.getuid()}"
    target = f"{domain}/{LABEL}"
    return {
        "install": [["launchctl", "bootstrap", domain, str(unit.path)]],
        "start": [["launchctl", "kickstart", target]],
        "stop": [["launchctl", "kill", "SIGTERM", target]],
        "restart": [["launchctl", "kickstart", "-k", target]],
        "status": [["launchctl", "print", target]],
        "uninstall": [["launchctl", "bootout", target]],
    }[verb]


def _write_unit(unit: ServiceUnit) -> None:
    try:
        unit.path.parent.mkdir(parents=True, exist_ok=True)
        unit.path.write_bytes(unit.content)
    except OSError as exc:
        hint = " (system scope needs root: use sudo, or --user)" if unit.scope == "system" else ""
        raise InfernetError(f"cannot write {unit.path}: {exc.strerror}{hint}") from None


def _cmd_service(args: argparse.Namespace, home: Path) -> int:
    manager: Manager = args.manager or default_manager()
    scope: Scope = args.scope or default_scope()
    directory: Path | None = getattr(args, "dir", None)
    try:
        unit = service_unit(home, manager, scope, directory)
    except ConfigError:
        if args.action != "uninstall":
            raise
        unit = service_unit_without_config(manager, scope, directory)
    verb = args.action
    report: dict[str, object] = {"action": verb, "manager": manager, "scope": scope,
                                 "file": str(unit.path)}
    if verb == "install":
        _write_unit(unit)
    outputs: list[str] = []
    failed: subprocess.CompletedProcess[str] | None = None
    if directory is None:
        for argv in manager_commands(unit, verb):
            done = run_manager(argv)
            outputs.append(done.stdout + done.stderr)
            ok = done.returncode == 0 or (verb == "uninstall" and argv[-1] != "daemon-reload")
            if not ok:
                failed = done
                break
    if verb == "uninstall":
        removed = unit.path.exists()
        unit.path.unlink(missing_ok=True)
        report["removed"] = removed
    report["installed"] = unit.path.exists()
    if verb == "status":
        report["active"] = None if directory is not None else failed is None
    return _report(args, verb, unit, report, outputs, failed, directory)


def service_unit_without_config(manager: Manager, scope: Scope,
                                directory: Path | None) -> ServiceUnit:
    """Where the unit would be, for ``uninstall`` when the config cannot be read."""
    folder = directory or _unit_dir(manager, scope)
    name = f"{LABEL}.plist" if manager == "launchd" else UNIT_NAME
    return ServiceUnit(manager, scope, folder / name, b"")


def _report(args: argparse.Namespace, verb: str, unit: ServiceUnit, report: dict[str, object],
            outputs: list[str], failed: subprocess.CompletedProcess[str] | None,
            directory: Path | None) -> int:
    if args.json:
        report["ok"] = failed is None or verb == "status"
        report["manager_output"] = "".join(outputs).strip()
        print(json.dumps(report))
    else:
        if verb == "status":
            print(f"Unit: {unit.path} ({'installed' if report['installed'] else 'not installed'})")
            if outputs:
                print("".join(outputs).rstrip())
        elif failed is not None:
            print(f"error: `{shlex.join(failed.args)}` failed: "
                  f"{(failed.stderr or failed.stdout).strip()}", file=sys.stderr)
            if verb == "install":
                print(f"The unit file is written at {unit.path}.", file=sys.stderr)
        else:
            _say_done(verb, unit, directory)
    if verb == "status":  # like systemctl: 3 = installed but not running
        return 1 if not report["installed"] else 0 if failed is None else 3
    return 0 if failed is None else 1


def _say_done(verb: str, unit: ServiceUnit, directory: Path | None) -> None:
    if verb == "install":
        print(f"Wrote {unit.path}.")
        if directory is not None:
            print("Not registered with the service manager (--dir); install it by hand.")
        else:
            print("Enabled at boot; start it now with `infernet service start`.")
    elif verb == "uninstall":
        print(f"Removed {unit.path}.")
    else:
        print(f"Service {verb}: done.")
