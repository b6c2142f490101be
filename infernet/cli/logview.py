"""``infernet logs [-f] [--lines N] [--json]``: show and follow the daemon log.

Owns: finding the log (`infernet.node.runfiles.log_file_path`, the same rule the daemon
uses), printing its last lines, and following it like ``tail -F``: new lines as they are
written, across rotation (the file replaced or truncated). Ctrl-C ends ``-f`` with exit 0.
``--json`` prints one object per line: ``{"time": "YYYY-MM-DD HH:MM:SS" | null, "message"}``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import BinaryIO, Final

from infernet.node.config import load_config
from infernet.node.runfiles import log_file_path

__all__ = ["add_logs_command"]

DEFAULT_LINES: Final = 200
FOLLOW_POLL: Final = 0.25
_LINE: Final = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)\] (.*)$")


def add_logs_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``logs``."""
    logs = sub.add_parser("logs", help="show the daemon log (-f follows it)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines")
    logs.add_argument("-n", "--lines", type=_count, default=DEFAULT_LINES, metavar="N",
                      help=f"how many of the last lines to show (default {DEFAULT_LINES})")
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    logs.set_defaults(func=_cmd_logs)


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a number of lines >= 0, got {text!r}")
    return n


def _emit(line: str, as_json: bool) -> None:
    if as_json:
        m = _LINE.match(line)
        doc = {"time": m[1], "message": m[2]} if m else {"time": None, "message": line}
        sys.stdout.write(json.dumps(doc) + "\n")
    else:
        sys.stdout.write(line + "\n")


def _last_lines(f: BinaryIO, n: int) -> list[str]:
    """The last ``n`` lines of ``f``, leaving it positioned at its end."""
    if n == 0:
        f.seek(0, os.SEEK_END)
        return []
    lines: deque[bytes] = deque(maxlen=n)
    f.seek(0)
    for raw in f:  # streaming: memory is bounded by n lines whatever the file size
        lines.append(raw)
    return [raw.decode(errors="replace").rstrip("\n") for raw in lines]


def _follow(path: Path, f: BinaryIO, as_json: bool) -> None:
    current, partial = f, b""
    ino = os.fstat(f.fileno()).st_ino
    try:
        while True:
            chunk = current.read()
            if chunk:
                *complete, partial = (partial + chunk).split(b"\n")
                for raw in complete:
                    _emit(raw.decode(errors="replace"), as_json)
                sys.stdout.flush()
                continue
            time.sleep(FOLLOW_POLL)  # tail -F polls too: there is no portable file watch
            try:
                st = path.stat()
            except FileNotFoundError:
                continue  # mid-rotation: the new file appears shortly
            if st.st_ino != ino or st.st_size < current.tell():
                # Rotated or truncated: read the new file from its start.
                if current is not f:
                    current.close()
                current, partial = path.open("rb"), b""
                ino = os.fstat(current.fileno()).st_ino
    finally:
        if current is not f:
            current.close()


def _cmd_logs(args: argparse.Namespace, home: Path) -> int:
    path = log_file_path(home, load_config(home).log_file)
    try:
        f = path.open("rb")
    except FileNotFoundError:
        print(f"No log yet at {path}: the node has not run here. Start it with "
              "`infernet start --detach`.", file=sys.stderr)
        return 1
    with f:
        for line in _last_lines(f, args.lines):
            _emit(line, args.json)
        sys.stdout.flush()
        if args.follow:
            try:
                _follow(path, f, args.json)
            except KeyboardInterrupt:
                return 0
    return 0
