"""The gateway benchmark still runs (quick mode): benchmarks that nobody runs rot."""

from __future__ import annotations

import pytest

from bench import gateway

pytestmark = pytest.mark.slow


def test_gateway_bench_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert gateway.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "added by coordinator+mesh+node" in out
