"""The key hierarchy with real processes: a node registers, obeys its user's signed commands
through the coordinator queue and over the mesh, refuses a stranger's, and rotates its key."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from infernet.protocol.keys import SecretKey
from tests.integration.conftest import BIN, MODEL, Launcher, Network, start_coordinator, wait_until

pytestmark = pytest.mark.slow


def infernet(launcher: Launcher, home: Path, *args: str,
             **env: str) -> subprocess.CompletedProcess[str]:
    full = {**launcher.env, "INFERNET_HOME": str(home), **env}
    return subprocess.run([str(BIN / "infernet"), *args], env=full, capture_output=True,
                          text=True, timeout=240, check=False)


def ok_json(launcher: Launcher, home: Path, *args: str, **env: str) -> Any:
    out = infernet(launcher, home, *args, "--json", **env)
    assert out.returncode == 0, (args, out.stdout, out.stderr)
    return json.loads(out.stdout)


def node_status(net: Network, node_hex: str) -> dict[str, Any]:
    r = httpx.get(f"{net.api}/api/v1/nodes/{node_hex}/status", timeout=5)
    r.raise_for_status()
    return dict(r.json())


def test_owner_commands_registration_and_rotation(launcher: Launcher, tmp_path: Path) -> None:
    net = start_coordinator(launcher)
    node = net.add_node("node", INFERNET_COORDINATOR_URL=net.api)
    net.wait_for_model()
    home = launcher.root / "node"
    chain = ok_json(launcher, home, "keys", "list")
    node_hex, node_npub = chain["node"]["hex"], chain["node"]["npub"]
    user_hex = chain["user"]["hex"]

    # The daemon registers itself once the coordinator has seen it announce.
    wait_until(lambda: node_status(net, node_hex).get("user_pubkey") == user_hex, 60,
               "the node to register")
    doc = ok_json(launcher, home, "register", "--coordinator", net.api)
    assert (doc["node_id"], doc["user_pubkey"]) == (node_hex, user_hex)

    # Stop serving the model by hand, then have the owner install it through the queue.
    launcher.run([str(BIN / "infernet"), "config", "set", "served_models", "something-else"],
                 home)
    wait_until(lambda: net.models() == [], 20, "the model to leave the network")
    done = ok_json(launcher, home, "command", "install", MODEL, "--node", node_npub,
                   "--coordinator", net.api)
    assert (done["via"], done["status"]) == ("coordinator", "done"), done
    wait_until(lambda: net.models() == [MODEL], 20, "the installed model to be announced")

    # Someone else's user key: the coordinator will not even queue it.
    stranger = tmp_path / "stranger.key"
    stranger.write_text(SecretKey.generate().even_y().hex() + "\n")
    stranger.chmod(0o600)
    refused = infernet(launcher, home, "command", "remove", MODEL, "--node", node_npub,
                       "--coordinator", net.api, "--user-key", str(stranger))
    assert refused.returncode == 1
    assert "not signed by the user key this node is registered with" in refused.stderr

    # Over the mesh, straight to the node: the stranger is refused by the node itself...
    addr = next(a for a in ok_json(launcher, home, "status")["listen_addrs"]
                if "/127.0.0.1/" in a)
    out = infernet(launcher, home, "command", "remove", MODEL, "--node", node_npub,
                   "--peer", addr, "--user-key", str(stranger), "--json")
    assert out.returncode == 1, out.stderr
    result = json.loads(out.stdout)
    assert (result["status"], result["code"]) == ("refused", "unauthorized")
    assert "not from the user that delegated this node" in result["message"]
    assert net.models() == [MODEL]
    # ...and the owner is obeyed.
    removed = ok_json(launcher, home, "command", "remove", MODEL, "--node", node_npub,
                      "--peer", addr)
    assert removed["status"] == "done" and MODEL not in removed["served_models"]
    wait_until(lambda: net.models() == [], 20, "the removed model to leave the network")
    log = node.log.read_text()
    assert "refused: command is not from the user that delegated this node" in log
    assert "model_remove 'gemma3-270m' from" in log

    # Rotation: refused while the node runs; afterwards the chain shows both keys and the
    # coordinator knows the new key (registered through the rotation) before it announces.
    busy = infernet(launcher, home, "keys", "rotate")
    assert busy.returncode == 1 and "stop it first" in busy.stderr
    assert node.stop() == 0
    rotated = ok_json(launcher, home, "keys", "rotate", INFERNET_COORDINATOR_URL=net.api)
    new_hex = rotated["new"]["hex"]
    assert rotated["old"]["hex"] == node_hex and rotated["registered"]["node_id"] == new_hex
    after = ok_json(launcher, home, "keys", "list")
    assert after["user"]["hex"] == user_hex and after["node"]["hex"] == new_hex
    assert after["node"]["delegation"]["valid"] and after["node"]["delegation"]["rotations"] == 1
    assert [r["hex"] for r in after["retired"]] == [node_hex]
    assert node_status(net, new_hex)["user_pubkey"] == user_hex
