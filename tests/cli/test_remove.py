"""``infernet remove``: asks first, stops nothing that is not running, deletes only a home."""

from __future__ import annotations

import json
from pathlib import Path

from infernet.node.config import init_home
from tests.cli.conftest import Cli, snapshot


def test_remove_needs_confirmation(cli: Cli) -> None:
    init_home(cli.home)
    before = snapshot(cli.home)
    refused = cli("remove")  # stdin is not a terminal and there is no --yes
    assert refused.returncode == 2 and "pass --yes" in refused.stderr
    assert snapshot(cli.home) == before


def test_remove_keep_data_then_everything(cli: Cli, tmp_path: Path) -> None:
    init_home(cli.home)
    assert cli("service", "install", "--manager", "systemd").returncode == 0
    unit = tmp_path / "units" / "infernet.service"
    assert unit.exists()
    kept = json.loads(cli("remove", "--yes", "--keep-data", "--json").stdout)
    assert kept == {"stopped_pid": None, "service_files": [str(unit)], "deleted": []}
    assert not unit.exists() and (cli.home / "keys" / "node.key").exists()
    done = cli("remove", "--yes")
    assert done.returncode == 0 and f"Deleted {cli.home}." in done.stdout
    assert not cli.home.exists()


def test_remove_refuses_a_directory_that_is_not_a_home(cli: Cli) -> None:
    cli.home.mkdir()
    (cli.home / "precious.txt").write_text("keep me")
    out = cli("remove", "--yes")
    assert out.returncode == 2 and "does not look like an Infernet home" in out.stderr
    assert (cli.home / "precious.txt").exists()
