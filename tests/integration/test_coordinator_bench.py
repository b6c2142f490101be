"""The instant-engine gateway benchmark still runs (quick mode): benchmarks nobody runs rot."""

from __future__ import annotations

import pytest

from bench import gateway_instant

pytestmark = pytest.mark.slow


def test_gateway_instant_bench_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway_instant.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "saturation" in out
    lines = [line.split() for line in out.splitlines() if line.strip().startswith("1 ")]
    assert {cells[1] for cells in lines} >= {"direct", "infernet"}
    assert all(cells[-1] == "0" for cells in lines), out  # no errors on any path
