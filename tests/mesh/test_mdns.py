"""mDNS discovery between two hosts inside a private network namespace (only `lo` up).

Never on the machine's real interfaces: the probe runs under ``unshare --net``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = "ip link set lo up && ip link set lo multicast on && ip route add 224.0.0.0/4 dev lo"


def _netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _netns_available(), reason="needs `unshare --net` (root) and iproute2")
def test_two_hosts_find_each_other_on_the_lan_within_two_seconds() -> None:
    cmd = f"{SETUP} && exec {sys.executable} -m tests.mesh.mdns_probe"
    out = subprocess.run(["unshare", "--net", "sh", "-c", cmd], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["a_sees_b"] and result["b_sees_a"], result
    assert result["seconds"] < 2, result
