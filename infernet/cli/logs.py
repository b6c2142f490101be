"""Logging setup for the command-line programs: ``[YYYY-MM-DD HH:MM:SS] message`` lines.

Owns: the log format from DESIGN.md §4, wiring libp2p's logger (which sets
``propagate=False`` on import) and hypercorn's into ours, and quieting their chatter.
Only ``cli/`` (and the coordinator's CLI) call this; nothing configures logging at import.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

__all__ = ["setup_logging"]

FORMAT = "[%(asctime)s] %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


_THIRD_PARTY = ("libp2p", "multiaddr", "hypercorn", "httpx", "httpcore", "quart",
                "async_service", "coordinator.http")


class _QuietThirdParty(logging.Filter):
    """Drop third-party records below ``level``: libp2p sets its own levels on import."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= self.level or not record.name.startswith(_THIRD_PARTY)


def setup_logging(
    *,
    verbose: bool = False,
    log_file: Path | None = None,
    terminal_level: int = logging.DEBUG,
    third_party_level: int = logging.WARNING,
) -> None:
    """Send our logs to stderr (from ``terminal_level``) and ``log_file``; third-party
    records only from WARNING up unless ``verbose``."""
    formatter = logging.Formatter(FORMAT, DATEFMT)
    terminal = logging.StreamHandler(sys.stderr)
    terminal.setLevel(terminal_level)
    handlers: list[logging.Handler] = [terminal]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        if not verbose:
            handler.addFilter(_QuietThirdParty(third_party_level))
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in _THIRD_PARTY:
        lg = logging.getLogger(name)
        lg.propagate = True
        # libp2p attaches its own handlers; route everything through ours instead.
        for handler in list(lg.handlers):
            lg.removeHandler(handler)
