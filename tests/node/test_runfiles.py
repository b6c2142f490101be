"""Run files: log location rules, pid/control files, liveness (zombies count as dead)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from infernet.node import runfiles
from infernet.node.runfiles import (
    ControlEndpoint,
    clear_run_files,
    log_file_path,
    pid_alive,
    read_control,
    read_pid,
    write_control,
    write_pid,
)


def test_log_location_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    assert log_file_path(home, "/x/y.log", {}) == Path("/x/y.log")
    # INFERNET_HOME relocates everything, the log included.
    assert log_file_path(home, "", {"INFERNET_HOME": str(home)}) == home / "logs/daemon.log"
    system = tmp_path / "var-log-infernet"
    monkeypatch.setattr(runfiles, "SYSTEM_LOG_DIR", system)
    assert log_file_path(home, "", {}) == system / "daemon.log"  # parent writable: creatable
    system.mkdir()
    system.chmod(0o500)
    try:
        if os.access(system, os.W_OK):
            pytest.skip("running as root: every directory is writable")
        assert log_file_path(home, "", {}) == home / "logs/daemon.log"
    finally:
        system.chmod(0o700)


def test_pid_and_control_files(tmp_path: Path) -> None:
    assert read_pid(tmp_path) is None and read_control(tmp_path) is None
    write_pid(tmp_path)
    assert read_pid(tmp_path) == os.getpid()
    endpoint = ControlEndpoint(pid=os.getpid(), port=1234, token="secret")
    path = write_control(tmp_path, endpoint)
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_control(tmp_path) == endpoint
    assert "secret" not in repr(endpoint)
    clear_run_files(tmp_path, pid=os.getpid() + 1)  # someone else's: kept
    assert read_pid(tmp_path) == os.getpid()
    clear_run_files(tmp_path)
    assert not (tmp_path / "run/node.pid").exists()
    assert not (tmp_path / "run/control.json").exists()
    (tmp_path / "run").mkdir(exist_ok=True)
    (tmp_path / "run/node.pid").write_text("garbage\n")
    assert read_pid(tmp_path) is None


def test_dead_and_zombie_pids_are_not_alive(tmp_path: Path) -> None:
    proc = subprocess.Popen(["true"])
    pid = proc.pid
    stat = Path(f"/proc/{pid}/stat")
    deadline = time.monotonic() + 10
    # Not reaped yet: it is a zombie once it exited, and a stale pid file must not count it.
    while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline, "child did not exit"
        time.sleep(0.01)
    write_pid(tmp_path, pid)
    assert not pid_alive(pid)
    assert read_pid(tmp_path) is None
    proc.wait()
    assert not pid_alive(pid)
    assert pid_alive(os.getpid())
