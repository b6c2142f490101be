"""The protocol benchmarks still run: each main in --quick mode (tiny counts, well under 1 s)."""

from __future__ import annotations

import pytest

from bench import announce_verify, frame_codec, protocol, protocol_crypto


@pytest.mark.parametrize("module", [frame_codec, announce_verify, protocol_crypto],
                         ids=lambda m: m.__name__)
def test_bench_main_quick(module: object, capsys: pytest.CaptureFixture[str]) -> None:
    assert module.main(["--quick"]) == 0  # type: ignore[attr-defined]
    out = capsys.readouterr().out
    assert "ratio vs" in out


def test_bench_protocol_runs_all_three(capsys: pytest.CaptureFixture[str]) -> None:
    assert protocol.run_all(["--quick"]) == 0
    out = capsys.readouterr().out
    for name in ("frame_codec", "announce_verify", "protocol_crypto"):
        assert f"=== bench.{name} ===" in out
