"""``infernet remove [--yes] [--keep-data]``: take the node off this machine.

Owns: the teardown order (stop the node, letting jobs drain; remove the service unit; delete
the node's home: config, keys, models, logs) and its safety rules: nothing happens without a
confirmation (a prompt, or ``--yes``; without a terminal and without ``--yes`` it refuses
with exit 2), and a home is only deleted when it looks like an Infernet home (it holds
``config.json`` or ``keys/``) and is neither ``/`` nor the user's home directory. The
program itself is left to the tool that installed it (``pip uninstall infernet``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from infernet.cli.daemon import stop_node
from infernet.cli.service import (
    default_manager,
    default_scope,
    manager_commands,
    run_manager,
    service_unit_without_config,
)
from infernet.node.config import CONFIG_FILE, ConfigError, NodeConfig, load_config
from infernet.node.runfiles import SYSTEM_LOG_DIR, log_file_path
from infernet.protocol.errors import InfernetError

__all__ = ["add_remove_command"]


def add_remove_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``remove``."""
    remove = sub.add_parser("remove", help="stop the node and delete its service, config, "
                            "keys and data")
    remove.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    remove.add_argument("--keep-data", action="store_true",
                        help="keep config, keys, models and logs (only stop and unregister)")
    remove.add_argument("--json", action="store_true", help="print what was done as JSON")
    remove.set_defaults(func=_cmd_remove)


def _looks_like_home(home: Path) -> bool:
    resolved = home.resolve()
    if resolved in (Path("/"), Path.home().resolve()):
        return False
    return (home / CONFIG_FILE).exists() or (home / "keys").is_dir()


def _confirm(question: str) -> bool:
    if not sys.stdin.isatty():
        raise ConfigError("refusing to remove without confirmation: pass --yes")
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def _remove_service() -> list[str]:
    """Disable and delete the service unit if there is one; return the files removed."""
    folder = os.environ.get("INFERNET_SERVICE_DIR")
    unit = service_unit_without_config(default_manager(), default_scope(),
                                       Path(folder) if folder else None)
    if not unit.path.exists():
        return []
    if not folder:
        for argv in manager_commands(unit, "uninstall"):
            try:
                run_manager(argv)  # best effort: the file goes whatever the manager says
            except InfernetError:
                break
    unit.path.unlink(missing_ok=True)
    return [str(unit.path)]


def _cmd_remove(args: argparse.Namespace, home: Path) -> int:
    try:
        config = load_config(home)
    except ConfigError:
        config = NodeConfig()  # a broken config must not block removing it
    what = "stop the node and remove its service" + ("" if args.keep_data else
                                                     f", then DELETE {home} (config, node "
                                                     "key, models, logs)")
    if not args.keep_data and home.exists() and not _looks_like_home(home):
        raise ConfigError(f"{home} does not look like an Infernet home (no config.json or "
                          "keys/); delete it yourself if you mean it")
    if not args.yes and not _confirm(f"This will {what}. Continue?"):
        print("Nothing removed.")
        return 1
    pid, gone = stop_node(home, config.drain_timeout + 30)
    if not gone:
        raise InfernetError(f"the node (pid {pid}) did not stop; nothing was deleted. Retry, or "
                            f"`kill {pid}` first")
    service_files = _remove_service()
    deleted: list[str] = []
    if not args.keep_data:
        log = log_file_path(home, config.log_file)
        if log.parent == SYSTEM_LOG_DIR and log.parent.exists():
            shutil.rmtree(log.parent)
            deleted.append(str(log.parent))
        if home.exists():
            shutil.rmtree(home)
            deleted.append(str(home))
    if args.json:
        print(json.dumps({"stopped_pid": pid, "service_files": service_files,
                          "deleted": deleted}))
        return 0
    if pid is not None:
        print(f"Stopped the node (pid {pid}).")
    for path in service_files:
        print(f"Removed the service unit {path}.")
    for path in deleted:
        print(f"Deleted {path}.")
    print("To remove the program too: `pip uninstall infernet` (or your installer's "
          "equivalent).")
    return 0
