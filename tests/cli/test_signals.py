"""run_until_signal: the first signal drains (or cancels) the service; nothing leaks."""

from __future__ import annotations

import os
import signal
from typing import Literal

import trio
import trio.lowlevel

from infernet.cli.signals import run_until_signal


async def test_first_signal_asks_a_draining_service_to_stop() -> None:
    stop = trio.Event()
    finished: list[str] = []

    def on_signal() -> Literal["draining", "cancel"]:
        stop.set()
        return "draining"

    async def main(scope: trio.CancelScope) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        await stop.wait()
        await trio.lowlevel.checkpoint()  # still running: the drain was not cancelled
        finished.append("drained")

    with trio.fail_after(10):
        assert await run_until_signal(main, on_signal) == 0
    assert finished == ["drained"]


async def test_first_signal_cancels_a_service_that_is_not_serving_yet() -> None:
    async def main(scope: trio.CancelScope) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        await trio.sleep_forever()

    with trio.fail_after(10):
        assert await run_until_signal(main, lambda: "cancel") == 0
        assert await run_until_signal(main) == 0
