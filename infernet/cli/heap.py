"""Garbage-collector settings for the long-running processes: ``infernet start``,
``infernet up`` and ``infernet-coordinator``.

Owns: `settle_heap`, called once a service has started.

Why: under load (``bench.gateway_instant``, 16 clients) CPython's default collector took
~6 % of the coordinator's CPU and ~2 % of the node's. Most of it was full collections: each
walked every object start-up leaves behind (libraries, the libp2p host, the app: ~160,000 in
the coordinator) in ~60 ms, a pause every few seconds that every job in flight waited out.
`gc.freeze` takes those objects out of the collector's sight (they live as long as the
process anyway), and a young generation of 10,000 instead of 700 objects makes the cheap
collections rarer too: the same run then spent ~0.4 % of its CPU collecting.

Invariants: only entry points call it, never library code: tests start services in process
and must keep the interpreter's defaults.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["YOUNG_THRESHOLD", "settle_heap"]

YOUNG_THRESHOLD: Final = 10_000


def settle_heap() -> None:
    """Collect, freeze what is alive now, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
