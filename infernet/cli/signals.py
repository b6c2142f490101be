"""Running a service until SIGINT/SIGTERM, then shutting it down cleanly.

Owns: the shutdown policy shared by ``infernet start``, ``infernet up`` and the
coordinator: the first signal cancels the service's nursery (clean, bounded shutdown, no
traceback); a second signal exits at once. A service that drains (``infernet start``) passes
``on_signal``: the first signal then asks it to stop gracefully instead of cancelling it.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Literal

import trio

__all__ = ["run_until_signal"]

log = logging.getLogger("infernet")


async def run_until_signal(
    main: Callable[[trio.CancelScope], Awaitable[None]],
    on_signal: Callable[[], Literal["draining", "cancel"]] | None = None,
) -> int:
    """Run ``main(scope)`` until it returns or a signal arrives; return the exit code.

    ``main`` may cancel ``scope`` itself to stop early. ``on_signal`` is called on the first
    signal; when it answers ``"cancel"`` (or is not given) ``scope`` is cancelled, when it
    answers ``"draining"`` ``main`` is left to finish on its own.
    """
    exit_code = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch() -> None:
                nonlocal exit_code
                seen = False
                async for signum in signals:
                    if seen:
                        log.info("second signal: exiting now")
                        os._exit(130)
                    seen = True
                    name = signal.Signals(signum).name
                    exit_code = 0
                    if on_signal is not None and on_signal() == "draining":
                        log.info("received %s: draining (a second signal exits at once)", name)
                    else:
                        log.info("received %s: shutting down", name)
                        nursery.cancel_scope.cancel()

            nursery.start_soon(watch)
            await main(nursery.cancel_scope)
            nursery.cancel_scope.cancel()
    return exit_code
