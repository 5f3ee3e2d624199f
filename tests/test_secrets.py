"""No secret leaks: a retried secret subagent, payloads failing their schema, the embedded
server's password, Flower's credentials. Real servers and processes throughout."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from orchestrator import (
    EmbeddedRedis,
    EmbeddedStack,
    InvalidPayload,
    Orchestrator,
    RunStatus,
    Settings,
    Task,
)
from tests.conftest import AGENT_MODULES, ARTIFACTS, ROOT, launch_flower, stop_flower, wait_for
from tests.test_demo import client_env
from workers.errors import ConfigError
from workers.models import AgentStatus
from workers.names import agent_queue_name, subtask_id
from workers.settings import FlowerSettings

pytestmark = pytest.mark.integration

USER, PASSWORD = "ops", f"pw-{uuid.uuid4().hex[:8]}"


def _secret() -> str:
    return f"sekrit-{uuid.uuid4().hex}"


@dataclass
class Flower:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> tuple[int, str]:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        req = urllib.request.Request(self.url + path, headers={"Authorization": f"Basic {token}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def task(self, task_id: str) -> dict[str, Any] | None:
        status, body = self.get(f"/api/task/info/{task_id}")
        return json.loads(body) if status == 200 else None

    def serving(self) -> bool:
        assert self.proc.poll() is None, f"flower exited: {self.log.read_text(errors='replace')}"
        try:
            return self.get("/healthcheck")[0] == 200
        except OSError:
            return False


@pytest.fixture
def flower(stack: EmbeddedStack) -> Iterator[Flower]:
    """``orchestrator flower`` on the session's broker (started, not yet known to be serving)."""
    port, proc, log = launch_flower(stack, f"{USER}:{PASSWORD}", "flower-secrets")
    try:
        yield Flower(f"http://127.0.0.1:{port}", proc, log)
    finally:
        stop_flower(proc)


def _listening(fl: Flower, orch: Orchestrator) -> None:
    """Flower serves before its event receiver listens: probe until a run's task shows."""
    wait_for(fl.serving, 20, "Flower to serve")
    for _ in range(10):
        probe = orch.spawn([Task("echo", {"text": "probe"})])
        probe.wait(timeout_s=30)
        try:
            wait_for(lambda p=probe: fl.task(f"{p.id}.coordinator"), 2, "the probe in Flower")
            return
        except AssertionError:
            continue
    pytest.fail(f"Flower saw no task events; log: {fl.log.read_text(errors='replace')}")


def test_a_retried_secret_subagent_never_shows_its_payload(
    stack: EmbeddedStack, orch: Orchestrator, flower: Flower
) -> None:
    """The state Redis is away for longer than a worker's own Redis retries: the subagent's
    ``start`` fails with a connection error, Celery's autoretry sends the message again, and
    the new message still carries ``payload=<secret>`` (Celery's retry would rebuild it with
    the full arguments). Flower, the events it got and the worker's log never show the payload.

    The outage has to outlast the worker's redis client retries (ORCH_STATE_RETRIES, few
    here): shorter ones are ridden out inside the client and never reach Celery."""
    secret = _secret()
    state = EmbeddedRedis(persist=True).start()
    queue = f"secret-retry-{uuid.uuid4().hex[:8]}"
    own = EmbeddedStack(
        workers=0,
        coordinator=False,
        broker_url=stack.url,
        state_url=state.url,
        agent_modules=AGENT_MODULES,
        # Few retries inside the worker's own Redis client: the outage reaches Celery's
        # autoretry in about a second instead of after the default ~22 s.
        extra_env={
            "PYTHONPATH": str(ROOT),
            "ORCH_AGENT_QUEUE": queue,
            "ORCH_STATE_RETRIES": "3",
            # The test moves the worker onto the queue while the state Redis is away.
            "ORCH_REMOTE_CONTROL__ALLOW": "add_consumer",
        },
        log_dir=ARTIFACTS / "logs" / f"secret-retry-{uuid.uuid4().hex[:6]}",
    ).start()
    client = Orchestrator(
        Settings(broker_url=stack.url, state_url=state.url, client_expand_max_n=4)
    )
    try:
        # Catalog published with `queue`, which the worker does not consume yet.
        own.start_worker("retrier", concurrency=1, queues=f"{queue}-idle")
        own.wait_ready(["retrier"], 30)
        hostname = own.online()["retrier"].hostname
        _listening(flower, orch)
        run = client.spawn([Task("echo", {"text": "hidden", "api_key": secret}, secret=True)])
        task_id = subtask_id(run.id, 0)
        state.stop()  # the state Redis goes away (its append-only file keeps the run)
        # echo's own queue under this stack's base queue (routing by agent).
        echo_queue = agent_queue_name(queue, "agent", "echo")
        # A broadcast is pub/sub: one sent before the worker's control channel subscribed (it
        # subscribes in its event loop's first turns, just after "ready") is lost. Ask again
        # until it answers; taking a queue it already consumes is harmless.
        replies = wait_for(
            lambda: orch.app.control.add_consumer(
                echo_queue, destination=[hostname], reply=True, timeout=2
            ),
            30,
            "the worker to take the queue",
        )
        assert replies, "the worker did not take the queue"

        # Flower's RETRY state lasts until the new message's task-received: read the worker.
        wait_for(lambda: "retry: Retry in" in own.log("retrier"), 30, "the autoretry")
        state.start()  # same port, password and data: the retried message completes the run
        res = run.wait(timeout_s=30)
        assert res.status is RunStatus.SUCCEEDED, res.error
        done = wait_for(
            lambda: (i := flower.task(task_id)) and i.get("state") == "SUCCESS" and i,
            10,
            "Flower to see the retried subagent succeed",
        )
        assert done["retries"] >= 1, done  # type: ignore[index]
        assert done["kwargs"] == "payload=<secret>", done  # type: ignore[index]
        assert done["args"].startswith(f"run={run.id} "), done  # type: ignore[index]
        status, listing = flower.get("/api/tasks")
        assert status == 200 and task_id in listing
        assert secret not in listing, "Flower's task list shows the retried secret payload"
        worker_log = own.log("retrier")
        assert secret not in worker_log
        assert state.password not in worker_log
    finally:
        client.close()
        own.stop()
        state.persist = False  # remove its data directory too
        state.stop()


def _coordinator_sees(stack: EmbeddedStack, run_id: str) -> str | None:
    text = stack.log("coordinator")
    return text if text.count(run_id) >= 2 else None  # its failure and its task's result


@pytest.mark.parametrize("secret", [True, False], ids=["secret", "public"])
def test_a_payload_failing_its_schema_is_named_never_quoted(
    stack: EmbeddedStack, orch: Orchestrator, secret: bool
) -> None:
    """Every payload, secret or not (the client cannot know which values are sensitive): the
    error says which field broke which rule, never the value, on every path."""
    value = _secret()
    bad = Task("echo", {"text": "x", "spin_s": value}, secret=secret)
    # At submit, checked by the client against the published schema.
    with pytest.raises(InvalidPayload) as info:
        orch.spawn([Task("echo", {"text": "fine"}), bad])
    msg = str(info.value)
    assert "task #1: field 'spin_s': must be of type number" in msg, msg
    assert value not in msg and value not in repr(info.value.errors)
    # Past the client (a non-Python client): the coordinator's check fails the run.
    run_id = uuid.uuid4().hex[:12]
    request = {
        "run_id": run_id,
        "pattern": "parallel-spawn",
        "tasks": [{"agent": "echo", "payload": bad.payload, "secret": secret}],
    }
    orch.app.send_task("orchestrator.run", args=[request], queue="orchestrator")
    res = wait_for(lambda: orch.store.result(run_id), 15, "the run to be failed")
    assert res.status is RunStatus.FAILED  # type: ignore[attr-defined]
    assert "task #0: field 'spin_s': must be of type number" in res.error  # type: ignore[attr-defined]
    assert value not in res.model_dump_json()  # type: ignore[attr-defined]
    assert value not in json.dumps(orch.store.events_after(run_id))
    log = wait_for(lambda: _coordinator_sees(stack, run_id), 10, "the coordinator's log lines")
    assert value not in log  # type: ignore[operator]


def test_a_model_check_that_quotes_the_value_is_not_repeated(
    stack: EmbeddedStack, orch: Orchestrator
) -> None:
    """The schema lets the payload through; the agent's input model refuses it in the worker
    with a message that quotes it. The envelope names the field and the check only."""
    value = f"DE{_secret()}"
    for secret in (True, False):
        res = orch.spawn([Task("iban_check", {"iban": value}, secret=secret)]).wait(timeout_s=30)
        env = res.results[0]
        assert env.status is AgentStatus.ERROR and env.error is not None
        assert env.error.type == "InvalidPayload"
        assert env.error.message == "field 'iban': fails the model's check 'value_error'"
        assert value not in res.model_dump_json()
        assert value not in json.dumps(orch.store.events_after(res.run_id))
    for name in ("worker1", "worker2"):
        assert value not in stack.log(name)


def test_the_embedded_server_needs_its_password(stack: EmbeddedStack, orch: Orchestrator) -> None:
    assert stack.redis is not None and len(stack.redis.password) >= 20
    port = stack.redis.port
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(
            host="127.0.0.1", port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0)
        ).ping()
    with socket.create_connection(("127.0.0.1", port), 5) as s:
        s.sendall(b"FLUSHALL\r\n")
        assert s.recv(100).startswith(b"-NOAUTH"), "the server obeyed a client without password"
    # The stack's processes and clients get it through the URL.
    assert stack.redis.password in stack.url and "ORCH_BROKER_URL" in stack.env()
    assert orch.spawn([Task("echo", {"text": "with password"})]).wait(timeout_s=30).ok
    assert stack.safe_url == f"redis://***@127.0.0.1:{port}/0"
    # Not on the server's command line (any local user can read that).
    assert stack.redis.proc is not None
    cmdline = Path(f"/proc/{stack.redis.proc.pid}/cmdline").read_bytes()
    assert stack.redis.password.encode() not in cmdline
    with EmbeddedRedis() as other:
        assert other.password != stack.redis.password


def test_up_never_prints_the_password() -> None:
    """`orchestrator up` prints the masked URL and a file (only its owner reads it) that
    points clients at the stack."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "up", "--workers", "1", "--no-flower"],
        env={**env, "PYTHONUNBUFFERED": "1"},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    password = "<none seen>"
    try:
        while not lines or "ORCH_BROKER_URL" not in lines[-1]:  # the line for clients
            line = proc.stdout.readline()
            assert line, "up exited:\n" + "".join(lines)
            lines.append(line)
        found = re.match(r"\. (\S+)", lines[-1])
        assert found, f"not a file to source: {lines[-1]}"
        env_file = Path(found.group(1))
        assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
        url = client_env(env_file)["ORCH_BROKER_URL"]
        password = url.split("://:", 1)[1].split("@", 1)[0]
        assert len(password) >= 20
        assert redis.Redis.from_url(url, socket_timeout=5).ping()
        with pytest.raises(redis.AuthenticationError):
            guess = url.replace(password, "guess")
            redis.Redis.from_url(guess, socket_timeout=5, retry=Retry(NoBackoff(), 0)).ping()
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
    out = "".join(lines) + rest
    assert "stopped." in rest
    assert re.search(r"redis://\*\*\*@127\.0\.0\.1:\d+/0", out), out
    assert password not in out


@pytest.mark.parametrize("auth", [":", "admin:", ":pw", ""])
def test_empty_flower_credentials_are_refused(auth: str) -> None:
    with pytest.raises(ConfigError, match="ORCH_FLOWER__BASIC_AUTH") as info:
        Settings(flower=FlowerSettings(basic_auth=auth))
    assert info.value.setting == "ORCH_FLOWER__BASIC_AUTH"


def test_empty_flower_password_from_the_environment_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ORCH_FLOWER__BASIC_AUTH", ":hunter2-flower")
    with pytest.raises(ConfigError, match="non-empty user") as info:
        Settings()
    assert "hunter2-flower" not in str(info.value)
    monkeypatch.setenv("ORCH_FLOWER__BASIC_AUTH", "admin:s3cret")
    assert Settings().flower.basic_auth == "admin:s3cret"
