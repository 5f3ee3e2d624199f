"""The Procfile runs as-is under a Procfile runner (honcho) against a configured Redis."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator import EmbeddedRedis, EmbeddedStack, Orchestrator, Task
from orchestrator.embedded import free_port
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration


def test_procfile_under_honcho(server: EmbeddedRedis, tmp_path: Path) -> None:
    honcho = shutil.which("honcho") or str(Path(sys.executable).parent / "honcho")
    if not Path(honcho).exists():
        pytest.skip("honcho is not installed (pip install honcho, part of the test extra)")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(
        ORCH_BROKER_URL=server.url,
        ORCH_AGENT_MODULES="workers.agents,tests.agents_for_tests",
        ORCH_FLOWER__BASIC_AUTH="ops:procfile-secret",
        ORCH_FLOWER__PORT=str(free_port()),
        PYTHONPATH=str(ROOT),
        PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
    )
    log = open(tmp_path / "honcho.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [honcho, "-f", str(ROOT / "Procfile"), "start"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        probe = EmbeddedStack(broker_url=server.url)
        wait_for(
            lambda: {i.role for i in probe.online().values()} >= {"worker", "coordinator"},
            60,
            "the Procfile's coordinator and worker to check in",
        )
        with Orchestrator(broker_url=server.url) as orch:
            res = orch.gather([Task("echo", {"text": t}) for t in "pq"], merge="join")
            assert res.wait(timeout_s=60).merged == {"texts": ["p", "q"]}
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) is not None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
    text = (tmp_path / "honcho.log").read_text(errors="replace")
    assert "flower" in text and "coordinator" in text and "worker" in text
    assert "procfile-secret" not in text  # the Flower credentials are not echoed
