"""The mesh benchmark still runs (quick mode): benchmarks nobody runs rot."""

from __future__ import annotations

import pytest

from bench import mesh, mesh_procs

pytestmark = pytest.mark.slow


def test_mesh_bench_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert mesh.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "gossip propagation" in out and "relayed/direct" in out


def test_cross_process_mesh_bench_quick(capsys: pytest.CaptureFixture[str]) -> None:
    assert mesh_procs.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert out.count("ratio ") == 3 and "frames/s" in out and out.count(" processes: p50") == 2
