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


def setup_logging(*, verbose: bool = False, log_file: Path | None = None) -> None:
    """Send our logs to stderr (and ``log_file``); third-party logs only from WARNING up."""
    formatter = logging.Formatter(FORMAT, DATEFMT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    noisy_level = logging.INFO if verbose else logging.CRITICAL
    for name in ("libp2p", "multiaddr", "hypercorn", "hypercorn.error", "httpx", "httpcore",
                 "quart", "async_service"):
        lg = logging.getLogger(name)
        lg.setLevel(noisy_level)
        lg.propagate = True
        # libp2p attaches its own handlers; route everything through ours instead.
        for handler in list(lg.handlers):
            lg.removeHandler(handler)
