"""The daemon log: rotation without restart, and ``infernet logs`` showing and following it."""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from infernet.cli.logs import FORMAT, LogFileHandler, setup_logging
from tests.cli.conftest import Cli


def make_logger(path: Path, name: str) -> tuple[logging.Logger, LogFileHandler]:
    handler = LogFileHandler(path)
    handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger(f"tests.logs.{name}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return logger, handler


def test_rotates_by_size_and_reopens_a_moved_file(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "daemon.log"
    logger, handler = make_logger(path, "rotate")
    try:
        handler.maxBytes = 300
        for i in range(20):
            logger.info("line %02d %s", i, "x" * 20)
        assert (tmp_path / "logs" / "daemon.log.1").exists()
        assert path.stat().st_size <= 300
        # logrotate's default: move the file away; the next record goes to a fresh file.
        path.rename(tmp_path / "logs" / "moved.log")
        logger.info("after the move")
        assert path.read_text().endswith("after the move\n")
        path.unlink()
        logger.info("after a delete")
        assert path.read_text().endswith("after a delete\n")
    finally:
        logger.removeHandler(handler)
        handler.close()
    first = path.read_text().splitlines()[0]
    assert first.startswith("[") and first[20:22] == "] "  # [YYYY-MM-DD HH:MM:SS] message


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    handlers, level, httpx_level = list(root.handlers), root.level, httpx_logger.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    httpx_logger.setLevel(httpx_level)


@pytest.mark.usefixtures("restore_logging")
def test_per_request_third_party_records_are_not_even_built() -> None:
    httpx_logger = logging.getLogger("httpx")
    setup_logging(terminal=False)
    assert not httpx_logger.isEnabledFor(logging.INFO)
    assert httpx_logger.isEnabledFor(logging.WARNING)
    setup_logging(terminal=False, verbose=True)
    assert httpx_logger.isEnabledFor(logging.DEBUG)


def write_log(cli: Cli, lines: list[str]) -> Path:
    path = cli.home / "logs" / "daemon.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def test_logs_last_lines_and_json(cli: Cli) -> None:
    missing = cli("logs")
    assert missing.returncode == 1 and "No log yet" in missing.stderr
    write_log(cli, [f"[2026-01-01 00:00:{i:02d}] event {i}" for i in range(10)] + ["stray"])
    out = cli("logs", "--lines", "3")
    assert out.returncode == 0
    assert out.stdout.splitlines() == ["[2026-01-01 00:00:08] event 8",
                                       "[2026-01-01 00:00:09] event 9", "stray"]
    docs = [json.loads(line) for line in cli("logs", "-n", "2", "--json").stdout.splitlines()]
    assert docs == [{"time": "2026-01-01 00:00:09", "message": "event 9"},
                    {"time": None, "message": "stray"}]
    bad = cli("logs", "--lines", "-4")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def read_line(proc: subprocess.Popen[str], timeout: float = 20) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no output in time"
    return proc.stdout.readline().rstrip("\n")


def test_follow_survives_rotation_and_ctrl_c(cli: Cli) -> None:
    path = write_log(cli, ["[2026-01-01 00:00:00] old"])
    proc = cli.popen("logs", "-f", "-n", "1")
    try:
        assert read_line(proc) == "[2026-01-01 00:00:00] old"
        with path.open("a") as f:
            f.write("[2026-01-01 00:00:01] new\n")
        assert read_line(proc) == "[2026-01-01 00:00:01] new"
        os.rename(path, path.with_suffix(".log.1"))
        path.write_text("[2026-01-01 00:00:02] after rotation\n")
        assert read_line(proc) == "[2026-01-01 00:00:02] after rotation"
        proc.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        while proc.poll() is None:
            assert time.monotonic() < deadline, "logs -f did not stop on Ctrl-C"
            time.sleep(0.05)
        assert proc.returncode == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


@pytest.mark.usefixtures("restore_logging")
def test_a_failed_dial_libp2p_logs_and_raises_is_not_an_error_line(
        capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging(terminal_level=logging.WARNING)
    tcp = logging.getLogger("libp2p.transport.tcp.tcp")
    tcp.error("Failed to open TCP stream: %s", "[Errno 111] Connection refused")
    tcp.error("Unexpected error opening TCP stream: %s", "boom")
    err = capsys.readouterr().err
    assert "Failed to open TCP stream" not in err
    assert "Unexpected error opening TCP stream: boom" in err
