"""Every example under examples/ runs against a real local network and does what it says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import Launcher, start_coordinator, wait_until

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_openai_chat_example(launcher: Launcher) -> None:
    net = start_coordinator(launcher)
    net.add_node()
    net.wait_for_model()
    env = {**launcher.env, "OPENAI_BASE_URL": net.base_url, "OPENAI_API_KEY": net.token}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "openai_chat.py"), "What is the capital of France?"],
        env=env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "[gemma3-270m] Paris" in out
    assert "[gemma3-270m, streaming] Paris" in out
    assert "served by node" in out and "served by node ?" not in out


def test_peer_chat_example(launcher: Launcher) -> None:
    net = start_coordinator(launcher)
    node = net.add_node()
    net.wait_for_model()
    addr = wait_until(lambda: re.search(r"listening on (/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)",
                                        node.log.read_text()), 30, "the node's address")[1]
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "peer_chat.py"), addr, "What is the capital of France?"],
        env=launcher.env, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Paris" in out
    assert re.search(r"served by node [0-9a-f]{16}…, receipt [0-9a-f]{16}…", out), out
