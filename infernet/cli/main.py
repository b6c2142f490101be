"""The ``infernet`` command: parse arguments, call the library, render the result.

Commands: ``init``, ``start`` (foreground or ``--detach``), ``stop``, ``status``, ``logs``,
``doctor``, ``config``, ``keys``, ``service``, ``remove``, ``up`` (a local coordinator + node
in one process), ``chat`` (one question, to a peer or through a coordinator) and
``--version``. argparse (standard library) does the parsing.

Exit codes, the same for every command:

- 0 — success;
- 1 — the operation failed (a node not running, a peer or the network failing, a doctor
  check failing, a job error);
- 2 — bad input, nothing was done: a usage error (unknown command or flag, missing or
  malformed argument), an invalid config file or value, a missing, corrupt or
  world-readable key file, a malformed multiaddr — any `InfernetError` whose code is
  ``bad_request``;
- 130 — interrupted by Ctrl-C before shutdown could be handled (a drained stop exits 0).

Every error is one line on stderr, ``error: <what is wrong and how to fix it> [code]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from infernet import __version__
from infernet.cli.chat import add_chat_command
from infernet.cli.command import add_command_commands
from infernet.cli.config import add_config_commands
from infernet.cli.daemon import add_daemon_commands, add_start_options
from infernet.cli.doctor import add_doctor_command
from infernet.cli.keys import add_keys_commands
from infernet.cli.logs import setup_logging
from infernet.cli.logview import add_logs_command
from infernet.cli.model import add_model_commands, run_model_command
from infernet.cli.parser import CommandParser
from infernet.cli.payout import add_payout_commands
from infernet.cli.register import add_register_command
from infernet.cli.remove import add_remove_command
from infernet.cli.service import add_service_commands
from infernet.cli.setup import add_setup_command
from infernet.cli.signals import run_until_signal
from infernet.protocol.errors import InfernetError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    # Typed as the base class so the add_*_commands helpers accept its subparsers; at run
    # time subparsers are CommandParser too (argparse uses type(self)).
    p: argparse.ArgumentParser = CommandParser(prog="infernet",
                                               description="Infernet inference node.")
    p.add_argument("--version", action="version", version=f"infernet {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create the node key and config")
    init.add_argument("--force", action="store_true", help="replace an existing key")
    init.add_argument("--user-key", type=Path, metavar="FILE",
                      help="your user key kept elsewhere (default: INFERNET_USER_KEY, else "
                      "keys/user.key, created if there is none)")
    init.add_argument("--json", action="store_true", help="print JSON")

    start = sub.add_parser("start", help="run the node in the foreground")
    start.add_argument("--port", type=int, help="libp2p TCP port (default 46337)")
    start.add_argument("--host", dest="listen_host", help="listen address (default 0.0.0.0)")
    start.add_argument("--bootstrap", action="append", metavar="MULTIADDR", default=[],
                       help="peer to connect to (repeatable), e.g. a coordinator's address")
    start.add_argument("--backend-url", help="use a running llama.cpp server instead of the "
                       "embedded engine")
    start.add_argument("--no-advertise", action="store_true",
                       help="keep listen addresses out of announcements")
    add_start_options(start)
    start.add_argument("--no-mdns", action="store_true", help="no LAN discovery (mDNS)")

    add_chat_command(sub)
    add_model_commands(sub)
    add_daemon_commands(sub)
    add_logs_command(sub)
    add_doctor_command(sub)
    add_config_commands(sub)
    add_keys_commands(sub)
    add_register_command(sub)
    add_command_commands(sub)
    add_service_commands(sub)
    add_remove_command(sub)
    add_payout_commands(sub)
    add_setup_command(sub)

    up = sub.add_parser("up", help="run a local network: coordinator + node + demo chat")
    up.add_argument("--api-port", type=int, default=8080, help="HTTP port (default 8080)")
    up.add_argument("--p2p-port", type=int, default=46337, help="node libp2p port")
    up.add_argument("--no-demo", action="store_true", help="skip the demo chat")
    up.add_argument("--prompt", default="What is the capital of France?",
                    help="the demo chat's question")
    return p


_REPORTING = frozenset({"model", "setup", "status", "stop", "logs", "doctor", "config", "keys",
                        "service", "remove", "register", "payout", "payments"})


def _home() -> Path:
    from infernet.node.config import home_dir

    return home_dir()


def _cmd_init(args: argparse.Namespace) -> int:
    from infernet.cli.keys import check_user_key, report_identity
    from infernet.node.config import config_path, init_home
    from infernet.protocol.keys import encode_npub

    home = _home()
    check_user_key(home, args.user_key)  # a bad --user-key writes nothing
    key, created = init_home(home, force=args.force)
    if args.json:
        import json
        import time

        from infernet.node.identity import ensure_identity

        identity = ensure_identity(home, key, int(time.time()), user_key_file=args.user_key)
        print(json.dumps({
            "node_id": encode_npub(key.public_key), "node_pubkey": key.public_key.hex(),
            "node_key_created": created, "keys_dir": str(home / "keys"),
            "config_path": str(config_path(home)), "user_pubkey": identity.user_pubkey,
            "user_key_created": identity.created_user_key,
            "user_key_file": str(identity.user_key_file) if identity.user_key_file else None,
            "delegation_issued": identity.issued_delegation,
            "warning": identity.warning or None}, indent=2))
        return 0
    print(("Created" if created else "Kept existing") + f" node key in {home / 'keys'}")
    print(f"Node id: {encode_npub(key.public_key)}")
    print(f"Config:  {config_path(home)}")
    report_identity(home, key, args.user_key)
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    import msgspec

    from infernet.cli.daemon import run_start
    from infernet.node.config import load_config

    home = _home()
    config = load_config(home)
    changes: dict[str, object] = {}
    if args.port is not None:
        changes["port"] = args.port
    if args.listen_host:
        changes["listen_host"] = args.listen_host
    if args.bootstrap:
        changes["bootstrap"] = (*config.bootstrap, *args.bootstrap)
    if args.backend_url:
        changes.update(backend="llamacpp", backend_url=args.backend_url)
    if args.no_advertise:
        changes["advertise"] = False
    if args.no_mdns:
        changes["mdns"] = False
    config = msgspec.structs.replace(config, **changes)
    return run_start(home, config, args, args.argv)


def _cmd_chat(args: argparse.Namespace) -> int:
    from infernet.cli.chat import run_chat

    return trio.run(run_chat, args)


def _cmd_up(args: argparse.Namespace) -> int:
    from infernet.cli.up import run_up

    return trio.run(run_until_signal, lambda scope: run_up(_home(), args, scope))


def _fail(exc: InfernetError) -> int:
    print(f"error: {exc} [{exc.code}]", file=sys.stderr)
    return 2 if exc.code == "bad_request" else 1


def _first_leaf(group: BaseExceptionGroup[InfernetError]) -> InfernetError:
    first = group.exceptions[0]
    return first if isinstance(first, InfernetError) else _first_leaf(first)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``infernet`` console script."""
    raw = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(raw)
    args.argv = raw  # `start --detach` hands the same options to the background process
    if args.command == "up" and not args.verbose:
        # The demo's answer streams to the terminal: keep routine log lines in the file.
        setup_logging(log_file=_home() / "logs" / "up.log", terminal_level=logging.WARNING)
    elif args.command in ("chat", "command") and not args.verbose:
        # Our own error line says why a dial failed; libp2p's retries would only repeat it.
        setup_logging(terminal_level=logging.WARNING, third_party_level=logging.CRITICAL)
    elif args.command in _REPORTING and not args.verbose:
        # These print their own report; a log line would only interleave with it.
        setup_logging(terminal_level=logging.ERROR)
    else:
        setup_logging(verbose=args.verbose)
    commands = {"init": _cmd_init, "start": _cmd_start, "up": _cmd_up, "chat": _cmd_chat,
                "model": run_model_command}
    try:
        func = getattr(args, "func", None)
        if func is not None:
            return int(func(args, _home()))
        return commands[args.command](args)
    except InfernetError as exc:
        return _fail(exc)
    except BaseExceptionGroup as group:
        # A service's nurseries wrap what it raised; one project error is still one line.
        errors, rest = group.split(InfernetError)
        if errors is None or rest is not None:
            raise
        return _fail(_first_leaf(errors))
    except KeyboardInterrupt:  # a signal before trio took over the handlers
        return 130
    except BrokenPipeError:  # the reader went away (`infernet logs | head`): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
