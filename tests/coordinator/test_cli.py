"""`infernet-coordinator` usage errors: one line naming the (sub)command's --help, exit 2."""

from __future__ import annotations

import pytest

from coordinator.cli import main


@pytest.mark.parametrize(("args", "needles"), [
    (["frobnicate"], ["invalid choice: 'frobnicate'", "infernet-coordinator --help"]),
    (["serve", "--bogus"], ["unrecognized arguments: --bogus",
                            "infernet-coordinator serve --help"]),
    (["serve", "--http-port", "web"], ["invalid int value", "infernet-coordinator serve --help"]),
    (["token", "revoke"], ["required: id", "infernet-coordinator token revoke --help"]),
])  # fmt: skip
def test_usage_errors_are_one_line(
    args: list[str], needles: list[str], capsys: pytest.CaptureFixture[str], tmp_path
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--data-dir", str(tmp_path), *args])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing was created
