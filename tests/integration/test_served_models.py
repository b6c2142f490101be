"""A running node follows `served_models` edits and the network sees the change at once."""

from __future__ import annotations

import pytest

from tests.integration.conftest import BIN, MODEL, Launcher, start_coordinator, wait_until

pytestmark = pytest.mark.slow


def test_node_re_announces_when_served_models_change(launcher: Launcher) -> None:
    net = start_coordinator(launcher)
    net.add_node("node")
    net.wait_for_model()
    home = launcher.root / "node"

    launcher.run([str(BIN / "infernet"), "config", "set", "served_models", "something-else"], home)
    wait_until(lambda: net.models() == [], 15, "the model to leave the network")

    launcher.run([str(BIN / "infernet"), "config", "unset", "served_models"], home)
    wait_until(lambda: net.models() == [MODEL], 15, "the model to come back")
