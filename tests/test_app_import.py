"""An operator's first day: the application's own package, in the directory the Procfile is
started from, is importable by ``orchestrator worker`` without PYTHONPATH (as by ``celery
worker``)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from orchestrator import EmbeddedRedis, EmbeddedStack, Orchestrator, Task
from tests.conftest import ROOT, wait_for

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent

APP_AGENTS = """
from pydantic import BaseModel

from workers import AgentContext, agent


class Number(BaseModel):
    n: int


class Doubled(BaseModel):
    doubled: int


@agent("myapp_double", input=Number, output=Doubled)
def double(x: Number, ctx: AgentContext) -> Doubled:
    return Doubled(doubled=2 * x.n)
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ORCH_") and k != "PYTHONPATH"}


def _console_script_dir(tmp_path: Path) -> Path:
    """Where an ``orchestrator`` console script of *this* checkout is.

    The venv's own script, when the package installed in the venv is this checkout (a plain
    ``pip install -e .``); else the same entry point with this checkout put after the script's
    directory on ``sys.path``, exactly where the installed package would be found. Neither puts
    the current directory on ``sys.path``: that is what the test is about.
    """
    probe = subprocess.run(
        [sys.executable, "-c", "import orchestrator; print(orchestrator.__file__)"],
        cwd=tmp_path,
        env=_clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    if Path(probe.stdout.strip()).parent == ROOT / "orchestrator":
        return BIN
    shim_dir = tmp_path / "bin"
    shim_dir.mkdir()
    shim = shim_dir / "orchestrator"
    shim.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        f"sys.path.insert(1, {str(ROOT)!r})\n"
        "from orchestrator.cli import main\n"
        "sys.exit(main())\n"
    )
    shim.chmod(0o755)
    return shim_dir


def test_procfile_worker_imports_the_app_package_from_the_current_directory(
    server: EmbeddedRedis, tmp_path: Path
) -> None:
    honcho = shutil.which("honcho") or str(BIN / "honcho")
    if not Path(honcho).exists():
        pytest.skip("honcho is not installed (pip install honcho, part of the test extra)")
    app = tmp_path / "app"
    (app / "myapp").mkdir(parents=True)
    (app / "myapp" / "__init__.py").write_text("")
    (app / "myapp" / "agents.py").write_text(APP_AGENTS)
    # The project's own Procfile lines for the two processes that run agents' work.
    lines = (ROOT / "Procfile").read_text().splitlines()
    procfile = [ln for ln in lines if ln.split(":", 1)[0] in ("coordinator", "worker")]
    assert len(procfile) == 2, lines
    (app / "Procfile").write_text("\n".join(procfile) + "\n")

    env = _clean_env()
    scripts = _console_script_dir(tmp_path)
    path = [str(scripts)] + ([str(BIN)] if scripts != BIN else [])
    env.update(
        ORCH_BROKER_URL=server.url,
        ORCH_AGENT_MODULES="myapp.agents",
        PATH=":".join([*path, env.get("PATH", "")]),
    )
    log_path = tmp_path / "honcho.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [honcho, "start"],
        cwd=app,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    probe = EmbeddedStack(broker_url=server.url)

    def both_up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"honcho exited {proc.returncode}:\n{log_path.read_text()}")
        return {i.role for i in probe.online().values()} >= {"worker", "coordinator"}

    children: list[psutil.Process] = []
    try:
        wait_for(both_up, 20, "the Procfile's coordinator and worker to check in")
        with Orchestrator(broker_url=server.url) as orch:
            res = orch.spawn([Task("myapp_double", {"n": 21})]).wait(timeout_s=10)
        assert res.ok, res
        assert res.results[0].output == {"doubled": 42}

        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) >= 3  # coordinator, worker and the worker's pool
        proc.send_signal(signal.SIGTERM)  # what a supervisor does to honcho
        assert proc.wait(timeout=20) is not None
        _, alive = psutil.wait_procs(children, timeout=5)
        assert alive == [], f"left behind: {alive}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        for child in children:  # whatever a failed assertion above left running
            if child.is_running():
                child.kill()
        log.close()
    assert "PYTHONPATH" not in env
