"""`orchestrator up` as operators run it: piped into a log, stopped by Ctrl-C, SIGTERM or SIGHUP,
with a stale broker URL exported, with Flower's port taken (real processes)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from orchestrator.embedded import free_port
from tests.conftest import ROOT, wait_for
from tests.test_demo import PRINTED_URL, _env, _leftovers

pytestmark = pytest.mark.integration


def _up(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "up", "--workers", "1", *args],
        env=env or _env(),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(proc: subprocess.Popen[str], marker: str, timeout_s: float = 60) -> str:
    assert proc.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return "".join(lines)
    raise AssertionError(f"no {marker!r} in:\n{''.join(lines)}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])
def test_up_piped_into_a_log_then_stopped_leaves_no_process(sig: signal.Signals) -> None:
    """`orchestrator up | tee log`, then Ctrl-C: the terminal's SIGINT reaches both, tee dies
    first, and up's next line goes to a closed pipe; a closed terminal sends SIGHUP."""
    env = _env()
    env["ORCH_BROKER_URL"] = "redis://127.0.0.1:1/0"  # stale, from an earlier session
    proc = _up("--no-flower", env=env)
    text = _read_until(proc, "for clients")
    assert "ignoring ORCH_BROKER_URL=redis://127.0.0.1:1/0" in text
    url = re.search(f"broker ({PRINTED_URL})", text)
    assert url, text
    assert _leftovers(url.group(1)), "the stack should be running"
    assert proc.stdout is not None
    proc.stdout.close()  # the reader (tee) is gone
    proc.send_signal(sig)
    proc.wait(timeout=60)
    # Its processes are reaped just after up's own exit.
    wait_for(lambda: _leftovers(url.group(1)) == [], 20, "up's processes to be gone")


def test_up_names_the_process_that_failed_and_exits_non_zero() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        proc = _up("--flower-port", str(port))
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out
    assert re.search(r"flower exited with code \d+; its log: \S+flower\.log", out), out
    url = re.search(f"broker ({PRINTED_URL})", out)
    assert url and _leftovers(url.group(1)) == []
