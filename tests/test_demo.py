"""`orchestrator demo`, the main job, as a user runs it: real processes, nothing left behind."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT
from workers.settings import safe_url

pytestmark = pytest.mark.integration


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


#: The broker URL as the CLI prints it: its password masked.
PRINTED_URL = r"redis://\*\*\*@127\.0\.0\.1:\d+/0"


def client_env(path: Path) -> dict[str, str]:
    """The variables a client environment file written by `orchestrator up` exports."""
    pairs = [shlex.split(line)[1].split("=", 1) for line in path.read_text().splitlines()]
    return {k: v for k, v in pairs}


def _leftovers(url: str) -> list[str]:
    """Processes of the stack at ``url`` (printed, password masked, or in full)."""
    port = url.rsplit(":", 1)[1].split("/")[0]
    found = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            env_url = proc.environ().get("ORCH_BROKER_URL")
            if f"--port {port}" in cmd or (env_url and safe_url(env_url) == safe_url(url)):
                found.append(f"{proc.pid}: {cmd}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_demo_runs_the_three_patterns_and_stops_everything() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator", "demo", "--difficulty", "4"],
        env=_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    for heading in ("parallel-spawn", "gather-then-merge", "race-then-cancel"):
        assert f"== {heading}" in text
    assert "all three patterns succeeded" in text
    assert re.search(r"winner #\d \(\w+\): nonce \d+", text)
    assert "validator 'pow_valid' rejected" in text  # the guesser's answer was checked
    url = re.search(f"broker ({PRINTED_URL})", text)
    assert url and ":6379/" not in url.group(1)
    assert not re.search(r"redis://:[^*@\s]+@", out.stdout + out.stderr), "a password was printed"
    assert _leftovers(url.group(1)) == []


def test_ctrl_c_stops_every_process_it_started() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "demo", "--difficulty", "8"],
        env=_env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if "race-then-cancel" in line or not line:
            break
    text = "".join(lines)
    url = re.search(f"broker ({PRINTED_URL})", text)
    assert url, text
    assert _leftovers(url.group(1)), "the stack should be running before Ctrl-C"
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, rest
    assert "stopped." in rest
    assert _leftovers(url.group(1)) == []


def test_up_serves_until_ctrl_c() -> None:
    """`orchestrator up`: embedded Redis, coordinator, workers and Flower until Ctrl-C."""
    import urllib.request

    from orchestrator import Orchestrator, Task
    from orchestrator.embedded import free_port

    env = _env()
    port = free_port()
    env["ORCH_FLOWER__PORT"] = str(port)
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "up", "--workers", "1"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    url = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and url is None:
        line = proc.stdout.readline()
        # The URL holds the server's password: `up` prints a file to source, not the URL.
        found = re.search(r"^\. (\S+client\.env)", line)
        if found:
            url = client_env(Path(found.group(1)))["ORCH_BROKER_URL"]
        if not line:
            break
    assert url, "no client environment file printed"
    try:
        with Orchestrator(broker_url=url) as orch:
            res = orch.spawn([Task("module_stats", {"module": "bisect"})]).wait(timeout_s=60)
            assert res.ok and res.results[0].output["functions"] > 0

        def flower_up() -> bool:
            try:
                return urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).status == 200
            except OSError:
                return False

        from tests.conftest import wait_for

        wait_for(flower_up, 30, "Flower to answer")
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    assert "stopped." in rest
    assert _leftovers(url) == []
