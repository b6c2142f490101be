"""`infernet up` — the README's run command — as a user runs it: a real subprocess."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import openai
import pytest

from tests.integration.conftest import BIN, MODEL, Launcher, free_port, wait_until

pytestmark = pytest.mark.slow


def test_up_prints_url_and_token_answers_and_stops_cleanly(
    launcher: Launcher, tmp_path: Path
) -> None:
    out = tmp_path / "up.stdout"
    err = tmp_path / "up.stderr"
    home = tmp_path / "home"
    with out.open("wb") as o, err.open("wb") as e:
        popen = subprocess.Popen(
            [str(BIN / "infernet"), "up", "--api-port", str(free_port()), "--p2p-port", "0"],
            stdout=o, stderr=e, env={**launcher.env, "INFERNET_HOME": str(home)})
    try:
        def serving() -> bool:
            if popen.poll() is not None:
                raise AssertionError(f"infernet up exited: {err.read_text()}")
            return "Serving until Ctrl-C." in out.read_text()

        wait_until(serving, 180, "infernet up to finish its demo")
        text = out.read_text()
        base_url = re.search(r"^OPENAI_BASE_URL=(http://127\.0\.0\.1:\d+/v1)$", text, re.M)
        api_key = re.search(r"^OPENAI_API_KEY=(inf_\S+)$", text, re.M)
        assert base_url and api_key, text
        assert "demo> What is the capital of France?" in text
        assert "Paris" in text.split("demo>")[1]
        # A fresh home is delegated like `infernet init`: no warning about owner commands.
        assert "will be refused" not in text + err.read_text()
        assert (home / "keys" / "delegation.cbor").is_file()

        with openai.OpenAI(base_url=base_url[1], api_key=api_key[1], max_retries=0) as client:
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "What is 2 + 2?"}])
        assert reply.usage is not None and reply.usage.completion_tokens > 0
        assert "4" in (reply.choices[0].message.content or "")
    finally:
        popen.send_signal(signal.SIGINT)
        code = popen.wait(20)
    assert code == 0
    assert "Traceback" not in err.read_text()
    assert (home / "logs" / "up.log").exists()


def test_infernet_stop_takes_the_whole_local_network_down(
    launcher: Launcher, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    env = {**launcher.env, "INFERNET_HOME": str(home)}
    out = tmp_path / "up.stdout"
    with out.open("wb") as o:
        popen = subprocess.Popen(
            [str(BIN / "infernet"), "up", "--no-demo", "--api-port", str(free_port()),
             "--p2p-port", "0"], stdout=o, stderr=subprocess.DEVNULL, env=env)
    try:
        wait_until(lambda: "Serving until Ctrl-C." in out.read_text(), 180, "infernet up")
        stop = subprocess.run([str(BIN / "infernet"), "stop"], env=env, capture_output=True,
                              text=True, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert popen.wait(30) == 0
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
