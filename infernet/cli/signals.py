"""Running a service until SIGINT/SIGTERM, then shutting it down cleanly.

Owns: the shutdown policy shared by ``infernet start``, ``infernet up`` and the
coordinator: the first signal cancels the service's nursery (clean, bounded shutdown, no
traceback); a second signal exits at once.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable

import trio

__all__ = ["run_until_signal"]

log = logging.getLogger("infernet")


async def run_until_signal(main: Callable[[trio.CancelScope], Awaitable[None]]) -> int:
    """Run ``main(scope)`` until it returns or a signal arrives; return the exit code.

    ``main`` may cancel ``scope`` itself to stop early.
    """
    exit_code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal exit_code
                async for signum in signals:
                    if nursery.cancel_scope.cancel_called:
                        log.info("second signal: exiting now")
                        os._exit(130)
                    log.info("received %s: shutting down", signal.Signals(signum).name)
                    exit_code = 0
                    nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await main(nursery.cancel_scope)
            nursery.cancel_scope.cancel()
    return exit_code
