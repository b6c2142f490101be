"""The argument parser of both command-line tools (``infernet``, ``infernet-coordinator``).

Owns: argparse's error style. A usage error is one line that names the (sub)command's
``--help``, exit status 2, instead of argparse's usage block.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import NoReturn

__all__ = ["CommandParser"]


class CommandParser(argparse.ArgumentParser):
    """argparse with a one-line error that points at the command's ``--help``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")

    def parse_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        # argparse reports an unknown option from the top-level parser; report it from the
        # subcommand it was given to, so the hint names that subcommand's --help.
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            _innermost(self, parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed


def _innermost(parser: argparse.ArgumentParser,
               parsed: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser that ``parsed`` went down to."""
    for action in parser._actions:  # argparse has no public walk of its subcommands
        if isinstance(action, argparse._SubParsersAction):
            chosen = action.choices.get(getattr(parsed, action.dest, None) or "")
            if chosen is not None:
                return _innermost(chosen, parsed)
    return parser
