"""Helpers for benchmarks that start real processes (not a benchmark itself)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

import httpx

__all__ = ["cpu_seconds", "free_port", "poll"]


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def poll(fn: Callable[[], object], timeout: float, what: str) -> object:
    """Call ``fn`` until it returns something truthy; exit the benchmark after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := fn():
                return result
        except (httpx.HTTPError, OSError):
            pass  # the process is still starting up
        time.sleep(0.1)  # polling a subprocess that is starting up
    raise SystemExit(f"timed out waiting for {what}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
