"""Logging setup for the command-line programs: ``[YYYY-MM-DD HH:MM:SS] message`` lines.

Owns: the log format from DESIGN.md §4, wiring libp2p's logger (which sets
``propagate=False`` on import) and hypercorn's into ours, quieting their chatter, and the
log file handler: rotated by size in process (`MAX_BYTES` × `BACKUPS`) and reopened when an
external tool (logrotate) moved the file away, so neither kind of rotation needs a restart.
Only ``cli/`` (and the coordinator's CLI) call this; nothing configures logging at import.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Final

__all__ = ["LogFileHandler", "setup_logging"]

MAX_BYTES: Final = 10 * 1024 * 1024
BACKUPS: Final = 5

FORMAT = "[%(asctime)s] %(message)s"
DATEFMT = "%Y-%m-%d %H:%M:%S"


_THIRD_PARTY = ("libp2p", "multiaddr", "hypercorn", "httpx", "httpcore", "quart",
                "async_service", "coordinator.http")
# Log every request at INFO (the node posts one per job to its engine): a level on the logger
# drops those records before they are built, not in a handler's filter after.
_PER_REQUEST = ("httpx",)


# Third-party records logged at ERROR just before the library raises the same failure to
# our code, which reports it at the level it deserves (a stored peer that is gone is routine):
# (logger name, message prefix). Shown only with --verbose.
_LOGGED_AND_RAISED: Final = (("libp2p.transport.tcp.tcp", "Failed to open TCP stream"),)


class _QuietThirdParty(logging.Filter):
    """Drop third-party records below ``level``: libp2p sets its own levels on import."""

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(_THIRD_PARTY):
            return True
        if any(record.name == name and isinstance(record.msg, str)
               and record.msg.startswith(prefix) for name, prefix in _LOGGED_AND_RAISED):
            return False
        return record.levelno >= self.level


class _LineFormatter(logging.Formatter):
    """Formats a record once however many handlers (terminal, file, the file's size check)
    ask for its line."""

    def format(self, record: logging.LogRecord) -> str:
        line: str | None = record.__dict__.get("_infernet_line")
        if line is None:
            line = super().format(record)
            record.__dict__["_infernet_line"] = line
        return line


class LogFileHandler(logging.handlers.RotatingFileHandler):
    """Appends to ``path``; rotates at `MAX_BYTES` and reopens the file when it was moved.

    With ``capture_stdio`` (a detached daemon), file descriptors 1 and 2 are pointed at the
    current file after every (re)open, so stray prints and crash tracebacks land in it too.
    """

    def __init__(self, path: Path, *, capture_stdio: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        super().__init__(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
        self.capture_stdio = capture_stdio
        self._capture()

    def emit(self, record: logging.LogRecord) -> None:
        self._reopen_if_moved()
        super().emit(record)

    def shouldRollover(self, record: logging.LogRecord) -> bool:
        # The base class also stats the path twice per record (never roll a non-file over);
        # `_reopen_if_moved` has just checked that the stream is the file at our path.
        if self.maxBytes <= 0:
            return False
        if self.stream is None:
            self.stream = self._open()
        return self.stream.tell() + len(self.format(record)) + 1 >= self.maxBytes

    def doRollover(self) -> None:
        super().doRollover()
        self._capture()

    def _reopen_if_moved(self) -> None:
        # Same test as logging.handlers.WatchedFileHandler: the path no longer names our file.
        try:
            on_disk = os.stat(self.baseFilename)
        except FileNotFoundError:
            on_disk = None
        if self.stream is not None:
            ours = os.fstat(self.stream.fileno())
            if on_disk is not None and (on_disk.st_dev, on_disk.st_ino) == (ours.st_dev,
                                                                            ours.st_ino):
                return
            self.stream.close()
        self.stream = self._open()
        self._capture()

    def _capture(self) -> None:
        if self.capture_stdio and self.stream is not None:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(self.stream.fileno(), 1)
            os.dup2(self.stream.fileno(), 2)


def setup_logging(
    *,
    verbose: bool = False,
    log_file: Path | None = None,
    terminal_level: int = logging.DEBUG,
    third_party_level: int = logging.WARNING,
    terminal: bool = True,
    capture_stdio: bool = False,
) -> None:
    """Send our logs to stderr (from ``terminal_level``, unless not ``terminal``) and
    ``log_file``; third-party records only from WARNING up unless ``verbose``.

    Raises:
        OSError: ``log_file`` cannot be created or opened.
    """
    formatter = _LineFormatter(FORMAT, DATEFMT)
    # FORMAT uses neither the caller's file and line nor thread or process names: skip
    # collecting them for every record (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    handlers: list[logging.Handler] = []
    if terminal:
        stream = logging.StreamHandler(sys.stderr)
        stream.setLevel(terminal_level)
        handlers.append(stream)
    if log_file is not None:
        handlers.append(LogFileHandler(log_file, capture_stdio=capture_stdio))
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
        if name in _PER_REQUEST:
            lg.setLevel(logging.NOTSET if verbose else third_party_level)
        # libp2p attaches its own handlers; route everything through ours instead.
        for handler in list(lg.handlers):
            lg.removeHandler(handler)
