"""`infernet.cli.heap.settle_heap`, in a fresh interpreter (it changes the process's
collector, which this test process must keep as it is)."""

from __future__ import annotations

import json
import subprocess
import sys

from infernet.cli.heap import YOUNG_THRESHOLD

SCRIPT = """
import gc, json
before = gc.get_threshold()
from infernet.cli.heap import settle_heap
settle_heap()
print(json.dumps({"before": before, "after": gc.get_threshold(),
                  "frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}))
"""


def test_settle_heap_freezes_start_up_and_collects_the_young_less_often() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60)
    got = json.loads(out.stdout)
    assert got["after"] == [YOUNG_THRESHOLD, got["before"][1], got["before"][2]]
    assert got["frozen"] > 1000  # the interpreter and what was imported
    assert got["tracked"] < got["frozen"] // 10  # the collector no longer walks them
