"""Files a running daemon leaves for the CLI: pid file, control endpoint, log location.

Owns: where the daemon log goes (`log_file_path`), ``run/node.pid`` (the daemon's pid, written
by the daemon itself so foreground, detached and service-managed nodes look the same),
``run/control.json`` (port and stop token of the local control server, mode 0600), and the
liveness test the CLI uses before trusting either file.

Log location (DESIGN.md §4 "Logs"): the config's ``log_file`` when set; else under
``$INFERNET_HOME/logs/`` when ``INFERNET_HOME`` is set (it relocates everything, and tests
always set it); else ``/var/log/infernet/daemon.log`` when that directory is writable (or
can be created, i.e. running as root); else ``~/.config/infernet/logs/daemon.log``.

Invariants: run files are removed when the daemon exits; a file whose pid is dead (or a
zombie) is stale and ignored; nothing here runs at import.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import msgspec

__all__ = [
    "ControlEndpoint",
    "clear_run_files",
    "log_file_path",
    "new_control_token",
    "pid_alive",
    "read_control",
    "read_pid",
    "write_control",
    "write_pid",
]

SYSTEM_LOG_DIR: Final = Path("/var/log/infernet")
LOG_NAME: Final = "daemon.log"
PID_FILE: Final = "run/node.pid"
CONTROL_FILE: Final = "run/control.json"


class ControlEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Where a running daemon's control server listens, and the token ``POST /stop`` needs."""

    pid: int
    port: int
    token: str
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __repr__(self) -> str:
        return f"ControlEndpoint(pid={self.pid}, port={self.port}, token=<redacted>)"


def _writable_dir(path: Path) -> bool:
    if path.is_dir():
        return os.access(path, os.W_OK | os.X_OK)
    return path.parent.is_dir() and os.access(path.parent, os.W_OK | os.X_OK)


def log_file_path(home: Path, configured: str = "",
                  env: Mapping[str, str] | None = None) -> Path:
    """Where the daemon writes its log (see the module docstring for the order)."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ if env is None else env
    if not env.get("INFERNET_HOME") and _writable_dir(SYSTEM_LOG_DIR):
        return SYSTEM_LOG_DIR / LOG_NAME
    return home / "logs" / LOG_NAME


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)  # readers never see a half-written file


def pid_alive(pid: int) -> bool:
    """True when process ``pid`` exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        # Field 3 is the state; an orphan nobody reaps stays "Z" forever.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we have


def write_pid(home: Path, pid: int | None = None) -> Path:
    """Write ``run/node.pid`` (this process unless ``pid``); return its path."""
    path = home / PID_FILE
    _write_private(path, f"{os.getpid() if pid is None else pid}\n".encode())
    return path


def read_pid(home: Path) -> int | None:
    """The pid of a live daemon from ``run/node.pid``, or None (missing, garbage or stale)."""
    try:
        pid = int((home / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def new_control_token() -> str:
    """A fresh random token for ``POST /stop``."""
    return secrets.token_urlsafe(24)


def write_control(home: Path, endpoint: ControlEndpoint) -> Path:
    """Write ``run/control.json`` (0600); return its path."""
    path = home / CONTROL_FILE
    _write_private(path, msgspec.json.encode(endpoint) + b"\n")
    return path


def read_control(home: Path) -> ControlEndpoint | None:
    """The control endpoint of a live daemon, or None (missing, garbage or stale)."""
    try:
        endpoint = msgspec.json.decode((home / CONTROL_FILE).read_bytes(), type=ControlEndpoint)
    except (OSError, msgspec.DecodeError):
        return None
    return endpoint if pid_alive(endpoint.pid) else None


def clear_run_files(home: Path, pid: int | None = None) -> None:
    """Remove the run files if they belong to ``pid`` (default: this process)."""
    pid = os.getpid() if pid is None else pid
    for name in (PID_FILE, CONTROL_FILE):
        path = home / name
        with contextlib.suppress(OSError, ValueError, msgspec.DecodeError):
            text = path.read_text()
            owner = (msgspec.json.decode(text, type=ControlEndpoint).pid
                     if name == CONTROL_FILE else int(text.strip()))
            if owner == pid:
                path.unlink()
