"""Import surfaces, settings and the CLI's thin layer."""

from __future__ import annotations

import importlib
import json

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

import orchestrator
import workers
from orchestrator import EmbeddedStack, Orchestrator, Settings, Task
from orchestrator.cli import main


@pytest.mark.parametrize("package", ["orchestrator", "workers"])
def test_every_public_name_imports(package: str) -> None:
    mod = importlib.import_module(package)
    assert mod.__all__, "no __all__"
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
    assert sorted(mod.__all__) == sorted(set(mod.__all__))


def test_workers_never_imports_orchestrator() -> None:
    from pathlib import Path

    root = Path(workers.__file__).parent
    offenders = [
        str(p)
        for p in root.rglob("*.py")
        if "import orchestrator" in p.read_text() or "from orchestrator" in p.read_text()
    ]
    assert offenders == []


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", "redis://h:1/2")
    monkeypatch.setenv("ORCH_AGENT_MODULES", "a.b, c")
    monkeypatch.setenv("ORCH_CANCEL__GRACE_S", "7")
    s = Settings()
    assert s.agent_modules == ["a.b", "c"]
    assert s.cancel.grace_s == 7
    assert s.redis_url() == "redis://h:1/2"
    assert s.celery_backend() == "redis://h:1/2"


def test_unknown_option_raises() -> None:
    with pytest.raises(ValidationError):
        Settings(brokr_url="redis://x")  # type: ignore[call-arg]


def test_rabbitmq_broker_needs_a_redis_for_state() -> None:
    s = Settings(broker_url="amqp://guest:guest@h//")
    with pytest.raises(orchestrator.ConfigError, match="ORCH_RESULT_BACKEND"):
        s.celery_backend()
    s2 = Settings(broker_url="amqp://guest:guest@h//", result_backend="redis://r/1")
    assert s2.redis_url() == "redis://r/1"


@pytest.mark.integration
def test_cli_agents_status_check(
    stack: EmbeddedStack, orch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", stack.url)
    runner = CliRunner()
    out = runner.invoke(main, ["agents"])
    assert out.exit_code == 0, out.output
    assert "agent     echo" in out.output and "validator starts_good" in out.output
    listed = json.loads(runner.invoke(main, ["agents", "--json"]).output)
    assert {"echo", "join", "pow_solver"} <= {e["name"] for e in listed}

    run = orch.spawn([Task("echo", {"text": "cli"})])
    run.wait(timeout_s=30)
    out = runner.invoke(main, ["status", run.id])
    assert out.exit_code == 0 and "succeeded" in out.output and "1/1 done" in out.output

    out = runner.invoke(main, ["check", "--role", "worker"])
    assert out.exit_code == 0 and "worker1@" in out.output
    out = runner.invoke(main, ["check", "--role", "worker", "--hostname", "ghost@nowhere"])
    assert out.exit_code == 3

    out = runner.invoke(main, ["report", run.id, "--no-svg"])
    assert out.exit_code == 0 and "speedup" in out.output


@pytest.mark.integration
def test_cli_submit_json_and_wait(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", stack.url)
    request = {
        "pattern": "gather-then-merge",
        "merge": "join",
        "tasks": [{"agent": "echo", "payload": {"text": t}} for t in "xy"],
    }
    out = CliRunner().invoke(
        main, ["submit", "--wait", "--timeout", "30"], input=json.dumps(request)
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["merged"] == {"texts": ["x", "y"]}
    bad = CliRunner().invoke(main, ["submit"], input='{"pattern": "nope"}')
    assert bad.exit_code != 0 and "invalid orchestration request" in bad.output


def test_cli_without_broker_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_BROKER_URL", raising=False)
    out = CliRunner().invoke(main, ["agents"])
    assert out.exit_code != 0 and "ORCH_BROKER_URL" in out.output


def test_a_password_with_an_at_sign_is_masked_whole() -> None:
    from workers.settings import safe_url

    assert safe_url("redis://:p@ss@host:6379/0") == "redis://***@host:6379/0"
