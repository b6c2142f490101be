"""The ``infernet`` command: parse arguments, call the library, render the result.

Commands: ``init``, ``start``, ``up`` (a local coordinator + node in one process), ``chat``
(one question, to a peer or through a coordinator) and ``--version``. argparse (standard
library) does the parsing; exit code 0 only on success.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from infernet import __version__
from infernet.cli.chat import add_chat_command
from infernet.cli.logs import setup_logging
from infernet.cli.signals import run_until_signal
from infernet.protocol.errors import InfernetError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infernet", description="Infernet inference node.")
    p.add_argument("--version", action="version", version=f"infernet {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="create the node key and config")
    init.add_argument("--force", action="store_true", help="replace an existing key")

    start = sub.add_parser("start", help="run the node in the foreground")
    start.add_argument("--port", type=int, help="libp2p TCP port (default 46337)")
    start.add_argument("--host", dest="listen_host", help="listen address (default 0.0.0.0)")
    start.add_argument("--bootstrap", action="append", metavar="MULTIADDR", default=[],
                       help="peer to connect to (repeatable), e.g. a coordinator's address")
    start.add_argument("--backend-url", help="use a running llama.cpp server instead of the "
                       "embedded engine")
    start.add_argument("--no-advertise", action="store_true",
                       help="keep listen addresses out of announcements")
    start.add_argument("--no-mdns", action="store_true", help="no LAN discovery (mDNS)")

    add_chat_command(sub)

    up = sub.add_parser("up", help="run a local network: coordinator + node + demo chat")
    up.add_argument("--api-port", type=int, default=8080, help="HTTP port (default 8080)")
    up.add_argument("--p2p-port", type=int, default=46337, help="node libp2p port")
    up.add_argument("--no-demo", action="store_true", help="skip the demo chat")
    up.add_argument("--prompt", default="What is the capital of France?",
                    help="the demo chat's question")
    return p


def _home() -> Path:
    from infernet.node.config import home_dir

    return home_dir()


def _cmd_init(args: argparse.Namespace) -> int:
    from infernet.node.config import config_path, init_home
    from infernet.protocol.keys import encode_npub

    home = _home()
    key, created = init_home(home, force=args.force)
    print(("Created" if created else "Kept existing") + f" node key in {home / 'keys'}")
    print(f"Node id: {encode_npub(key.public_key)}")
    print(f"Config:  {config_path(home)}")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    import msgspec

    from infernet.node.config import load_config, load_node_key
    from infernet.node.daemon import run_node

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
    key = load_node_key(home)

    async def main(scope: trio.CancelScope) -> None:
        await run_node(home, config, key)

    return trio.run(run_until_signal, main)


def _cmd_chat(args: argparse.Namespace) -> int:
    from infernet.cli.chat import run_chat

    return trio.run(run_chat, args)


def _cmd_up(args: argparse.Namespace) -> int:
    from infernet.cli.up import run_up

    return trio.run(run_until_signal, lambda scope: run_up(_home(), args, scope))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``infernet`` console script."""
    args = _parser().parse_args(argv)
    if args.command == "up" and not args.verbose:
        # The demo's answer streams to the terminal: keep routine log lines in the file.
        setup_logging(log_file=_home() / "logs" / "up.log", terminal_level=logging.WARNING)
    elif args.command == "chat" and not args.verbose:
        # Our own error line says why a dial failed; libp2p's retries would only repeat it.
        setup_logging(terminal_level=logging.WARNING, third_party_level=logging.CRITICAL)
    else:
        setup_logging(verbose=args.verbose)
    commands = {"init": _cmd_init, "start": _cmd_start, "up": _cmd_up, "chat": _cmd_chat}
    try:
        return commands[args.command](args)
    except InfernetError as exc:
        print(f"error: {exc} [{exc.code}]", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a signal before trio took over the handlers
        return 130


if __name__ == "__main__":
    sys.exit(main())
