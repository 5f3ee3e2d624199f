"""Import surfaces, settings and the CLI's thin layer."""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

import pytest
from click.testing import CliRunner
from pydantic import ValidationError

import orchestrator
import workers
from orchestrator import EmbeddedStack, Orchestrator, Settings, Task
from orchestrator.cli import main
from tests.conftest import ROOT
from workers.errors import ConfigError
from workers.settings import NOT_SETTINGS_PREFIXES, setting_names


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


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("ORCH_KEY_PREFX", "ORCH_KEY_PREFIX"),
        ("ORCH_DEFAULT_DEADLINE", "ORCH_DEFAULT_DEADLINE_S"),
        ("ORCH_AGENT_MODULE", "ORCH_AGENT_MODULES"),
        ("ORCH_CANCEL__GRACE", "ORCH_CANCEL__GRACE_S"),
        ("ORCH_FLOWER__BASICAUTH", "ORCH_FLOWER__BASIC_AUTH"),
        ("ORCH_BROKER_URL__X", "ORCH_BROKER_URL"),  # a plain field has no sections
        ("orch_key_prefx", "ORCH_KEY_PREFIX"),  # pydantic-settings reads names in any case
    ],
)
def test_an_unknown_orch_variable_is_refused_naming_the_closest_setting(
    monkeypatch: pytest.MonkeyPatch, typo: str, meant: str
) -> None:
    monkeypatch.setenv(typo, "redis://:hunter2@h:1/0")
    with pytest.raises(ConfigError) as caught:
        Settings()
    assert caught.value.setting == typo
    assert f"{typo} (did you mean {meant}?)" in str(caught.value)
    assert "hunter2" not in str(caught.value)  # names only, never values


def test_an_unknown_orch_variable_far_from_any_setting_is_named_without_a_guess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCH_ZZZ", "1")
    monkeypatch.setenv("ORCH_KEY_PREFX", "x")
    with pytest.raises(ConfigError, match=r"ORCH_KEY_PREFX .*, ORCH_ZZZ;") as caught:
        Settings()
    assert "ORCH_ZZZ (did you mean" not in str(caught.value)


def test_test_and_bench_variables_and_whole_sections_are_accepted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("ORCH_TEST_REDIS_URL", "ORCH_TEST_AMQP_URL", "ORCH_BENCH_REDIS_URL"):
        monkeypatch.setenv(name, "redis://127.0.0.1:1/0")
    monkeypatch.setenv("ORCH_CANCEL", '{"grace_s": 9}')  # a section as JSON is a setting too
    assert Settings().cancel.grace_s == 9
    names = setting_names()
    assert {"ORCH_BROKER_URL", "ORCH_FLOWER__LOCAL_ONLY", "ORCH_ADVISOR__STATS_TTL_S"} <= names
    assert not [n for n in names if n.startswith(NOT_SETTINGS_PREFIXES)]


@pytest.mark.parametrize(
    ("env", "url", "says"),
    [
        (
            "ORCH_BROKER_URL",
            "reddis://:hunter2@h:6379/0",
            "scheme reddis:// (did you mean redis://?)",
        ),
        ("ORCH_BROKER_URL", "http://h:6379", "scheme http://; accepted: redis://, rediss://, amqp"),
        ("ORCH_BROKER_URL", "h:6379", "not a URL"),
        ("ORCH_BROKER_URL", "unix:///run/redis.sock", "scheme unix://"),  # kombu has no unix
        (
            "ORCH_STATE_URL",
            "amqp://u:hunter2@h//",
            "scheme amqp://; accepted: redis://, rediss://, unix://",
        ),
    ],
)
def test_a_url_with_a_scheme_the_project_cannot_use_is_refused_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, url: str, says: str
) -> None:
    monkeypatch.setenv(env, url)
    with pytest.raises(ConfigError) as caught:
        Settings()
    assert caught.value.setting == env
    assert str(caught.value).startswith(env) and says in str(caught.value)
    assert "hunter2" not in str(caught.value)


@pytest.mark.parametrize(
    "url", ["redis://h/0", "rediss://h/0", "amqp://h//", "amqps://h//", "pyamqp://h//"]
)
def test_every_broker_scheme_the_project_runs_on_is_accepted(url: str) -> None:
    assert Settings(broker_url=url, state_url="unix:///run/redis.sock").broker_url == url


def test_a_worker_with_a_misspelt_setting_exits_saying_what_was_meant() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(PYTHONPATH=str(ROOT), ORCH_BROKER_URL="redis://127.0.0.1:1/0", ORCH_KEY_PREFX="x")
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "worker"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode != 0
    assert "ORCH_KEY_PREFX (did you mean ORCH_KEY_PREFIX?)" in proc.stderr, proc.stderr


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


@pytest.mark.integration
def test_cli_submit_wait_timeout_says_what_to_run_next_and_exits_2(
    stack: EmbeddedStack,
    orch: Orchestrator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_marker: Callable[[str], str],
) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", stack.url)
    work = {"seconds": 30, "marker": tmp_marker("slow"), "mode": "cooperative"}
    request = {
        "pattern": "parallel-spawn",
        "deadline_s": 60,
        "tasks": [{"agent": "work", "payload": work}],
    }
    out = CliRunner().invoke(
        main, ["submit", "--wait", "--timeout", "1"], input=json.dumps(request)
    )
    found = re.search(r"run (\S+) has not ended after 1s; the run goes on: ", out.output)
    assert found, out.output
    run_id = found.group(1)
    try:
        assert out.exit_code == 2, out.output  # as `watch --timeout`
        assert f"orchestrator watch {run_id} / orchestrator cancel {run_id}" in out.output
        assert "run.cancel()" not in out.output  # CLI words, not Python advice
    finally:
        orch.get_run(run_id).cancel()


def test_cli_without_broker_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_BROKER_URL", raising=False)
    out = CliRunner().invoke(main, ["agents"])
    assert out.exit_code != 0 and "ORCH_BROKER_URL" in out.output


def test_a_password_with_an_at_sign_is_masked_whole() -> None:
    from workers.settings import safe_url

    assert safe_url("redis://:p@ss@host:6379/0") == "redis://***@host:6379/0"
