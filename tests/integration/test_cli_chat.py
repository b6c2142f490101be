"""`infernet chat` as a user runs it: straight to a peer, and through a coordinator."""

from __future__ import annotations

import json
import re
import subprocess

import pytest

from tests.integration.conftest import BIN, Launcher, start_coordinator, wait_until

pytestmark = pytest.mark.slow


def test_chat_direct_to_peer_and_via_coordinator(launcher: Launcher) -> None:
    net = start_coordinator(launcher)
    node = net.add_node()
    net.wait_for_model()
    addr = wait_until(lambda: re.search(r"listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)",
                                        node.log.read_text()), 10, "node address in its log")[1]
    home = launcher.root / "client"

    direct = subprocess.run(
        [str(BIN / "infernet"), "chat", "--peer", addr, "--json", "What is the capital of France?"],
        env={**launcher.env, "INFERNET_HOME": str(home)}, capture_output=True, text=True,
        timeout=60)
    assert direct.returncode == 0, direct.stderr
    result = json.loads(direct.stdout)
    assert "Paris" in result["text"] and result["completion_tokens"] > 0
    assert len(result["node"]) == 64

    via = subprocess.run(
        [str(BIN / "infernet"), "chat", "--coordinator", net.api, "What is the capital of France?"],
        env={**launcher.env, "INFERNET_HOME": str(home), "INFERNET_TOKEN": net.token},
        capture_output=True, text=True, timeout=60)
    assert via.returncode == 0, via.stderr
    assert "Paris" in via.stdout
    assert "completion tokens" in via.stderr

    wrong = subprocess.run(
        [str(BIN / "infernet"), "chat", "--coordinator", net.api, "--token", "inf_bad", "hi"],
        env={**launcher.env, "INFERNET_HOME": str(home)}, capture_output=True, text=True,
        timeout=60)
    assert wrong.returncode == 1
    assert "[unauthorized]" in wrong.stderr

    bad_addr = subprocess.run(
        [str(BIN / "infernet"), "chat", "--peer", "/ip4/127.0.0.1/tcp/1", "hi"],
        env={**launcher.env, "INFERNET_HOME": str(home)}, capture_output=True, text=True,
        timeout=60)
    assert bad_addr.returncode == 2  # bad input (a malformed multiaddr) exits 2
    assert "[bad_request]" in bad_addr.stderr and "Traceback" not in bad_addr.stderr
