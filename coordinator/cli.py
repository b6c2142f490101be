"""The ``infernet-coordinator`` command: ``serve`` and ``token create|list|limits|revoke``.

The data directory holds the SQLite database and the coordinator's libp2p key:
``--data-dir``, else ``INFERNET_COORDINATOR_HOME``, else ``$INFERNET_HOME/coordinator``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import trio

from coordinator.jobs import UNWITNESSED_PER_DAY
from coordinator.ratelimit import DEFAULT_RPH, DEFAULT_RPM
from coordinator.service import (
    DEFAULT_HTTP_PORT,
    DEFAULT_P2P_PORT,
    CoordinatorConfig,
    open_store,
    run_coordinator,
)
from coordinator.store import Store
from infernet.cli.heap import settle_heap
from infernet.cli.logs import setup_logging
from infernet.cli.parser import CommandParser
from infernet.cli.signals import run_until_signal
from infernet.node.config import home_dir
from infernet.protocol.errors import InfernetError

__all__ = ["main"]


def _data_dir(arg: str | None) -> Path:
    if arg:
        return Path(arg).expanduser()
    env = os.environ.get("INFERNET_COORDINATOR_HOME")
    return Path(env).expanduser() if env else home_dir() / "coordinator"


def _parser() -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = CommandParser(
        prog="infernet-coordinator", description="Infernet coordinator: OpenAI-compatible API.")
    p.add_argument("--data-dir", help="database and key directory")
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = sub.add_parser("serve", help="run the coordinator in the foreground")
    serve.add_argument("--http-host", default="127.0.0.1")
    serve.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT)
    serve.add_argument("--p2p-host", default="0.0.0.0")
    serve.add_argument("--p2p-port", type=int, default=DEFAULT_P2P_PORT)
    serve.add_argument("--job-timeout", type=_positive_float, default=300.0, metavar="SECONDS",
                       help="a job not finished after this fails with `timeout` (default 300)")
    serve.add_argument("--capacity-wait", type=_positive_float, default=5.0, metavar="SECONDS",
                       help="how long an interactive request waits for a free node slot "
                            "before 503 no_capacity (default 5)")
    serve.add_argument("--rpm", type=_positive_int, default=DEFAULT_RPM,
                       help=f"default job submissions per minute per token ({DEFAULT_RPM})")
    serve.add_argument("--rph", type=_positive_int, default=DEFAULT_RPH,
                       help=f"default job submissions per hour per token ({DEFAULT_RPH})")
    serve.add_argument("--unwitnessed-per-day", type=_positive_int, default=UNWITNESSED_PER_DAY,
                       metavar="N", help="receipts for jobs this coordinator did not route "
                       "(never paid) that one node may store per 24 h; past that 429 "
                       f"(default {UNWITNESSED_PER_DAY})")
    token = sub.add_parser("token", help="manage API tokens")
    tsub = token.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    create = tsub.add_parser("create", help="mint a token (printed once)")
    create.add_argument("--name", required=True)
    create.add_argument("--rpm", type=_positive_int, help="own per-minute limit")
    create.add_argument("--rph", type=_positive_int, help="own per-hour limit")
    limits = tsub.add_parser("limits", help="set a token's limits (omit one for the default)")
    limits.add_argument("id")
    limits.add_argument("--rpm", type=_positive_int)
    limits.add_argument("--rph", type=_positive_int)
    tsub.add_parser("list", help="list tokens (ids, names, limits; never secrets)")
    revoke = tsub.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("id")
    return p


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _limit(value: int | None) -> str:
    return "default" if value is None else str(value)


def _token_command(store: Store, args: argparse.Namespace) -> int:
    if args.token_command == "create":
        secret, record = store.create_token(args.name, rpm=args.rpm, rph=args.rph)
        print(secret)
        print(f"token id {record.id} ({record.name}); store the secret now: "
              "it is not shown again", file=sys.stderr)
        return 0
    if args.token_command == "list":
        for record, revoked in store.list_tokens():
            state = "revoked" if revoked else "live"
            print(f"{record.id}  {state:<7}  rpm={_limit(record.rpm):<7}  "
                  f"rph={_limit(record.rph):<7}  {record.name}")
        return 0
    if args.token_command == "limits":
        if store.set_token_limits(args.id, rpm=args.rpm, rph=args.rph):
            print(f"{args.id}: rpm={_limit(args.rpm)} rph={_limit(args.rph)}")
            return 0
        print(f"error: no live token with id {args.id}", file=sys.stderr)
        return 1
    if store.revoke_token(args.id):
        print(f"revoked {args.id}")
        return 0
    print(f"error: no live token with id {args.id}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``infernet-coordinator`` console script."""
    args = _parser().parse_args(argv)
    setup_logging(verbose=args.verbose)
    data_dir = _data_dir(args.data_dir)
    try:
        if args.command == "token":
            store = open_store(data_dir)
            try:
                return _token_command(store, args)
            finally:
                store.close()
        config = CoordinatorConfig(data_dir=data_dir, http_host=args.http_host,
                                   http_port=args.http_port, p2p_host=args.p2p_host,
                                   p2p_port=args.p2p_port, job_timeout=args.job_timeout,
                                   capacity_wait=args.capacity_wait, rpm=args.rpm,
                                   rph=args.rph, unwitnessed_per_day=args.unwitnessed_per_day)

        async def serve(scope: trio.CancelScope) -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(run_coordinator, config)
                settle_heap()

        return trio.run(run_until_signal, serve)
    except InfernetError as exc:
        print(f"error: {exc} [{exc.code}]", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
