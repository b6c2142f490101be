"""Bad input: one line on stderr saying what is wrong and how to fix it, exit 2, nothing written."""

from __future__ import annotations

import pytest

from infernet.node.config import init_home
from tests.cli.conftest import Cli, snapshot

PEER = "/ip4/127.0.0.1/tcp/46337/p2p/16Uiu2HAmBawpeawSjdxzi2b8NcCjszr9Szp4ESTK5aqARLaaUF5s"


def assert_refused(cli: Cli, args: list[str], *needles: str) -> None:
    before = snapshot(cli.home)
    out = cli(*args)
    assert out.returncode == 2, (args, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert out.stdout == ""
    assert snapshot(cli.home) == before, "a refused command wrote files"


@pytest.mark.parametrize(("args", "needles"), [
    (["frobnicate"], ["invalid choice: 'frobnicate'", "infernet --help"]),
    (["status", "--bogus"], ["unrecognized arguments: --bogus", "infernet status --help"]),
    (["model", "install", "--bogus", "x"], ["unrecognized arguments: --bogus",
                                           "infernet model install --help"]),
    (["config", "set", "port"], ["required: value", "infernet config set --help"]),
    (["start", "--port", "http"], ["invalid int value", "infernet start --help"]),
    (["start", "--bootstrap", "/ip4/1.2.3.4/tcp/5"], ["bad peer multiaddr", "/p2p/"]),
    (["chat", "--peer", "not-a-multiaddr", "hi"], ["bad peer multiaddr", "[bad_request]"]),
    (["config", "set", "port", "70000"], ["port", "<= 65535"]),
    (["config", "set", "prot", "1"], ["unknown config key 'prot'", "known keys"]),
    (["config", "set", "bootstrap", "/dns4/x"], ["bad peer multiaddr"]),
])
def test_usage_and_value_errors(cli: Cli, args: list[str], needles: list[str]) -> None:
    init_home(cli.home)
    assert_refused(cli, args, *needles)


def test_broken_config_file(cli: Cli) -> None:
    init_home(cli.home)
    path = cli.home / "config.json"
    path.write_text('{"port": 46337,')
    for args in (["start"], ["config", "set", "port", "1"], ["logs"]):
        assert_refused(cli, args, str(path), "not valid JSON", "fix or delete")
    path.write_text('{"port": "many"}')
    assert_refused(cli, ["start", "--detach"], str(path), "$.port", "Expected `int`")
    path.write_text('{"prot": 1}')
    assert_refused(cli, ["start"], "unknown field", "prot")


def test_key_readable_by_others_is_refused(cli: Cli) -> None:
    init_home(cli.home)
    key = cli.home / "keys" / "node.key"
    key.chmod(0o644)
    for args in (["start"], ["start", "--detach"], ["keys", "list"]):
        assert_refused(cli, args, str(key), "mode 0644", f"chmod 600 {key}")
    key.write_text("not a key\n")
    key.chmod(0o600)
    assert_refused(cli, ["keys", "export", "node"], str(key), "init --force")


def test_missing_key_says_run_init(cli: Cli) -> None:
    assert_refused(cli, ["start"], "run `infernet init` first")
