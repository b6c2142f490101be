"""Helpers to drive ``infernet`` as a user does: in a subprocess, with a temp INFERNET_HOME."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from rich.console import Console

BIN = Path(sys.executable).parent


@dataclass
class Cli:
    """Runs ``infernet ARGS`` with this test's home and environment."""

    home: Path
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 60,
                 input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "infernet"), *args], env=self.env, input=input,
                              capture_output=True, text=True, timeout=timeout, check=False)

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(BIN / "infernet"), *args], env=self.env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under ``root`` with its mode and content, to prove nothing was written."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes())
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERNET_")}
    home = tmp_path / "home"
    env.update(INFERNET_HOME=str(home), INFERNET_SERVICE_DIR=str(tmp_path / "units"),
               INFERNET_CONTROL_PORT="0", PYTHONUNBUFFERED="1")
    return Cli(home, env)


def console(width: int = 120) -> Console:
    """A plain-text console writing to memory (read it back with `output`)."""
    return Console(file=io.StringIO(), width=width, force_terminal=False, color_system=None)


def output(c: Console) -> str:
    assert isinstance(c.file, io.StringIO)
    return c.file.getvalue()


def closed_url() -> str:
    """An http:// URL on a loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"
