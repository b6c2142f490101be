"""``infernet service``: the unit files written, validated by systemd when it is here."""

from __future__ import annotations

import json
import plistlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infernet.cli.service import render_systemd
from infernet.node.config import init_home
from tests.cli.conftest import BIN, Cli


def _interpreter() -> str:
    """What a unit runs: the interpreter the `infernet` command ran under, its script's
    shebang (`.venv/bin/python3`), which need not be this process's (`python -m pytest`)."""
    return (BIN / "infernet").read_text().splitlines()[0].removeprefix("#!")


def test_systemd_unit_install_status_uninstall(cli: Cli, tmp_path: Path) -> None:
    init_home(cli.home)
    units = tmp_path / "units"
    out = cli("service", "install", "--user", "--manager", "systemd", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    unit = units / "infernet.service"
    assert report["file"] == str(unit) and report["installed"] is True
    text = unit.read_text()
    assert f"ExecStart={_interpreter()} -m infernet.cli.main start" in text
    assert f"Environment=INFERNET_HOME={cli.home.resolve()}" in text
    assert "KillMode=mixed" in text and "TimeoutStopSec=90" in text
    assert "WantedBy=default.target" in text and "network-online" not in text

    status = cli("service", "status", "--manager", "systemd", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["installed"] is True
    gone = cli("service", "uninstall", "--manager", "systemd")
    assert gone.returncode == 0 and not unit.exists()
    assert cli("service", "status", "--manager", "systemd").returncode == 1


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize("scope", ["system", "user"])
def test_systemd_analyze_accepts_the_unit(tmp_path: Path, scope: str) -> None:
    unit = tmp_path / "infernet.service"
    unit.write_text(render_systemd([sys.executable, "-m", "infernet.cli.main", "start"],
                                   {"INFERNET_HOME": str(tmp_path / "my home")}, scope, 90))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                          text=True, timeout=60, check=False)
    problems = [line for line in (done.stdout + done.stderr).splitlines()
                if "infernet.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def test_launchd_plist(cli: Cli, tmp_path: Path) -> None:
    init_home(cli.home)
    out = cli("service", "install", "--manager", "launchd", "--user")
    assert out.returncode == 0, out.stderr
    plist = plistlib.loads((tmp_path / "units" / "org.infernet.node.plist").read_bytes())
    assert plist["Label"] == "org.infernet.node"
    assert plist["ProgramArguments"] == [_interpreter(), "-m", "infernet.cli.main", "start"]
    assert plist["EnvironmentVariables"]["INFERNET_HOME"] == str(cli.home.resolve())
    assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True


def test_system_scope_without_systemd_is_a_clear_error(cli: Cli) -> None:
    init_home(cli.home)
    del cli.env["INFERNET_SERVICE_DIR"]
    cli.env["PATH"] = str(Path(sys.executable).parent)  # no systemctl on it
    out = cli("service", "start", "--user", "--manager", "systemd")
    assert out.returncode == 1
    assert "systemctl not found" in out.stderr and "Traceback" not in out.stderr
