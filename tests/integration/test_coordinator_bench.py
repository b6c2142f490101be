"""The instant-engine gateway benchmark still runs (quick mode): benchmarks nobody runs rot."""

from __future__ import annotations

import pytest

from bench import gateway_instant

pytestmark = pytest.mark.slow


def test_gateway_instant_bench_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_instant.main(["--quick"]) == 0
    out = capsys.readouterr().out
    streamed, saturation = out.split("saturation")
    rows = [line.split() for line in streamed.splitlines() if line.strip().startswith("1 ")]
    assert {cells[1] for cells in rows} >= {"direct", "infernet"}
    assert all(cells[-1] == "0" for cells in rows), out  # no errors on any path
    rows = [line.split() for line in saturation.splitlines()
            if line.strip().startswith(("1 ", "16 "))]
    assert {(cells[0], cells[1]) for cells in rows} >= {("16", "direct"), ("16", "infernet")}
    assert all(cells[5] == "0" for cells in rows), out  # clients path jobs/s p50 p99 err
    [infernet] = [cells for cells in rows if cells[:2] == ["16", "infernet"]]
    assert infernet[6] == "coordinator" and infernet[9] == "node"  # CPU per job, measured
