"""``infernet config get|set|unset|path``: read and change the node config safely.

Owns: turning a command-line string into the typed value of a `NodeConfig` field (numbers,
booleans, comma-separated or JSON lists), validating the whole config before anything is
written, and writing it back with mode 0600. ``get`` shows effective values (file plus
``INFERNET_*`` overrides); ``set`` changes the file only and says when an environment
variable shadows it, or when a running node must be restarted to pick it up.

Invariant: an invalid key or value exits 2 with the file untouched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from pathlib import Path
from typing import Any

import msgspec

from infernet.cli.daemon import check_bootstrap
from infernet.node.config import ConfigError, NodeConfig, config_path, load_config, save_config
from infernet.node.runfiles import read_pid

__all__ = ["add_config_commands", "parse_value"]


def add_config_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``config`` and its subcommands."""
    config = sub.add_parser("config", help="read or change the node config")
    actions = config.add_subparsers(dest="action", required=True, metavar="ACTION")
    get = actions.add_parser("get", help="print one key, or every key")
    get.add_argument("key", nargs="?")
    get.add_argument("--json", action="store_true", help="print JSON")
    get.set_defaults(func=_cmd_get)
    set_ = actions.add_parser("set", help="change one key (validated; file stays 0600)")
    set_.add_argument("key")
    set_.add_argument("value", help="lists: comma-separated or a JSON array")
    set_.add_argument("--json", action="store_true", help="print the new value as JSON")
    set_.set_defaults(func=_cmd_set)
    unset = actions.add_parser("unset", help="reset one key to its default")
    unset.add_argument("key")
    unset.add_argument("--json", action="store_true", help="print the new value as JSON")
    unset.set_defaults(func=_cmd_unset)
    path = actions.add_parser("path", help="print where the config file is")
    path.add_argument("--json", action="store_true", help="print JSON")
    path.set_defaults(func=_cmd_path)


def _field_types() -> dict[str, Any]:
    hints = typing.get_type_hints(NodeConfig, include_extras=True)
    return {name: hints[name] for name in NodeConfig.__struct_fields__}


def _check_key(key: str) -> Any:
    types = _field_types()
    if key not in types:
        raise ConfigError(f"unknown config key {key!r}; known keys: {', '.join(types)}")
    return types[key]


def _is_sequence(tp: Any) -> bool:
    base = typing.get_origin(tp)
    if base is typing.Annotated:
        return _is_sequence(typing.get_args(tp)[0])
    return base in (tuple, list)


def parse_value(key: str, text: str) -> Any:
    """Convert ``text`` to the type of config field ``key``.

    Raises:
        ConfigError: unknown key, or a value of the wrong type or out of range.
    """
    tp = _check_key(key)
    candidate: Any = text
    if _is_sequence(tp):
        if text.lstrip().startswith("["):
            try:
                candidate = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{key}: {text!r} is not a JSON list ({exc.msg})") from None
        else:
            candidate = [item.strip() for item in text.split(",") if item.strip()]
    try:
        value = msgspec.convert(candidate, tp, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{key}: invalid value {text!r} ({exc})") from None
    if key == "bootstrap":
        check_bootstrap(value)
    return value


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(msgspec.to_builtins(value))


def _cmd_get(args: argparse.Namespace, home: Path) -> int:
    config = msgspec.to_builtins(load_config(home))
    if args.key is None:
        if args.json:
            print(json.dumps(config, indent=2))
        else:
            for key, value in config.items():
                print(f"{key} = {_show(value)}")
        return 0
    _check_key(args.key)
    value = config[args.key]
    print(json.dumps({"key": args.key, "value": value}) if args.json else _show(value))
    return 0


def _write(home: Path, key: str, value: Any, as_json: bool) -> int:
    # Validate the file as it is (no env overrides): a broken file is reported, not replaced.
    current = load_config(home, env={})
    try:
        updated = msgspec.structs.replace(current, **{key: value})
    except (TypeError, msgspec.ValidationError) as exc:  # defensive: parse_value checked it
        raise ConfigError(f"{key}: {exc}") from None
    path = save_config(home, updated)
    shown = msgspec.to_builtins(getattr(updated, key))
    if as_json:
        print(json.dumps({"key": key, "value": shown, "file": str(path)}))
    else:
        print(f"{key} = {_show(shown)}  ({path})")
    env_name = f"INFERNET_{key.upper()}"
    if env_name in os.environ:
        print(f"note: {env_name} is set in this environment and overrides the file",
              file=sys.stderr)
    pid = read_pid(home)
    if pid is not None:
        print(f"note: the running node (pid {pid}) keeps its old settings until restarted: "
              "`infernet stop && infernet start --detach`", file=sys.stderr)
    return 0


def _cmd_set(args: argparse.Namespace, home: Path) -> int:
    return _write(home, args.key, parse_value(args.key, args.value), args.json)


def _cmd_unset(args: argparse.Namespace, home: Path) -> int:
    _check_key(args.key)
    return _write(home, args.key, getattr(NodeConfig(), args.key), args.json)


def _cmd_path(args: argparse.Namespace, home: Path) -> int:
    path = config_path(home)
    print(json.dumps({"file": str(path), "exists": path.exists()}) if args.json else path)
    return 0
