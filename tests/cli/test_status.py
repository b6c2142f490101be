"""``infernet status`` and ``infernet stop`` when no node serves (no engine started here)."""

from __future__ import annotations

import json
import os

from infernet.node.config import init_home
from infernet.node.runfiles import write_pid
from tests.cli.conftest import Cli


def test_not_running(cli: Cli) -> None:
    out = cli("status", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout) == {"state": "stopped", "online": False, "pid": None}
    human = cli("status")
    assert human.returncode == 1 and "not running" in human.stdout
    stop = cli("stop", "--json")  # nothing to stop is not a failure: `stop && start` works
    assert stop.returncode == 0
    assert json.loads(stop.stdout) == {"pid": None, "was_running": False, "stopped": True}


def test_starting_node_is_not_serving_yet(cli: Cli) -> None:
    write_pid(cli.home, os.getpid())  # a live process whose control port is not up yet
    out = cli("status", "--json")
    assert out.returncode == 1
    assert json.loads(out.stdout) == {"state": "starting", "online": False, "pid": os.getpid()}
    assert "starting" in cli("status").stdout
    init_home(cli.home)
    again = cli("start", "--detach")
    assert again.returncode == 1
    assert f"already running from {cli.home} (pid {os.getpid()})" in again.stderr
