"""Celery's conventions hold: ``celery -A`` points at our apps, Celery worker options pass
through, unsupported pools are refused, and ORCH_KEY_PREFIX keeps two deployments on one Redis
apart — every key, kombu's and Celery's too (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
import redis
from click.testing import CliRunner

from orchestrator import EmbeddedStack, Orchestrator, RunStatus, Task
from orchestrator.cli import main
from tests.conftest import ROOT, _stack

pytestmark = pytest.mark.integration


def test_celery_dash_a_inspects_our_workers(stack: EmbeddedStack) -> None:
    env = {**stack.env(), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.celery_app", "inspect", "ping", "-t", "5"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "worker1@" in out.stdout and "pong" in out.stdout
    coordinators = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "orchestrator.celery_app", "inspect", "ping"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert coordinators.returncode == 0, coordinators.stdout + coordinators.stderr
    assert "coordinator@" in coordinators.stdout


@pytest.fixture(scope="module")
def bare() -> Iterator[EmbeddedStack]:
    """A coordinator and no worker: the tests start their own."""
    s = _stack(name="bare", workers=0)
    try:
        yield s
    finally:
        s.stop()


def test_celery_worker_options_pass_through(bare: EmbeddedStack) -> None:
    """``orchestrator worker -- --max-tasks-per-child=1``: each task in a fresh pool process."""
    bare.start_process(
        "pt", ["worker", "-c", "1", "--hostname", "pt@%h", "--", "--max-tasks-per-child=1"]
    )
    bare.wait_ready(["pt"], 60)
    o = Orchestrator(broker_url=bare.url, key_prefix=bare.key_prefix)
    try:
        pids = set()
        for i in range(3):  # one after another: each in the pool process made for it
            res = o.spawn([Task("echo", {"text": f"p{i}"})], preflight="off").wait(timeout_s=60)
            assert res.status is RunStatus.SUCCEEDED, res.error
            pids.add(res.results[0].output["pid"])
        assert len(pids) == 3, pids
    finally:
        o.close()
        bare.stop_process("pt")


@pytest.mark.parametrize("pool", ["gevent", "eventlet"])
def test_greenlet_pools_are_refused_saying_why(pool: str) -> None:
    for args in (["worker", "--", "-P", pool], ["worker", "--", f"--pool={pool}"]):
        res = CliRunner().invoke(main, args, env={"ORCH_BROKER_URL": "redis://127.0.0.1:1/0"})
        assert res.exit_code != 0
        assert f"pool {pool!r} is not supported" in res.output and "greenlet" in res.output


def _targets() -> list[str]:
    return ["embedded", *(["machine"] if os.environ.get("ORCH_TEST_REDIS_URL") else [])]


@pytest.mark.parametrize("where", _targets())
def test_two_prefixes_on_one_server_never_meet(stack: EmbeddedStack, where: str) -> None:
    """Deployment B has no process yet; A's coordinator and worker, on the same server, must
    not take B's messages (before, the queues `orchestrator` and `agents` were shared)."""
    url = stack.url if where == "embedded" else os.environ["ORCH_TEST_REDIS_URL"]
    pa, pb = (f"meet-{x}-{uuid.uuid4().hex[:6]}" for x in "ab")
    a = _stack(name="prefix-a", workers=1, broker_url=url, key_prefix=pa)
    b: EmbeddedStack | None = None
    oa = Orchestrator(broker_url=url, key_prefix=pa)
    ob = Orchestrator(broker_url=url, key_prefix=pb)
    raw = redis.Redis.from_url(url, decode_responses=True)
    try:
        raw.hset(ob.store.keys.catalog, mapping=raw.hgetall(oa.store.keys.catalog))
        first = ob.spawn([Task("echo", {"text": "b"})], preflight="off")  # B's, queued first
        second = oa.spawn([Task("echo", {"text": "a"})], preflight="off")
        assert second.wait(timeout_s=60).status is RunStatus.SUCCEEDED
        # A shared list would have handed B's older message to A's coordinator first.
        assert first.status().status is RunStatus.SUBMITTED
        assert raw.llen(ob.store.keys.queue(ob.settings.coordinator_queue)) == 1
        b = _stack(name="prefix-b", workers=1, broker_url=url, key_prefix=pb)
        assert first.wait(timeout_s=60).status is RunStatus.SUCCEEDED
        # kombu's own keys (its routing table) are under each deployment's prefix.
        for prefix in (pa, pb):
            assert raw.exists(f"{prefix}:_kombu.binding.{oa.settings.coordinator_queue}")
    finally:
        for s in (a, b):
            if s is not None:
                s.stop()
        for prefix in (pa, pb):
            keys = list(raw.scan_iter(match=f"{prefix}:*", count=1000))
            for i in range(0, len(keys), 500):
                raw.delete(*keys[i : i + 500])
        raw.close()
        oa.close()
        ob.close()
