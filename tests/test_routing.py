"""Routing by agent: a message reaches only a worker that has its agent; one that still gets a
task it lacks hands it back; the catalog knows who serves what, and forgets what nobody has
served for ORCH_CATALOG_STALE_S. Real workers, each with its own ORCH_AGENT_MODULES."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from orchestrator import EmbeddedStack, Orchestrator, Settings, Task
from orchestrator.cli import main
from orchestrator.events import read_events
from tests.conftest import _stack, wait_for
from workers.errors import UnknownAgent
from workers.models import AgentKind, Pattern, RunStatus, TaskMeta

#: The worker without the tests' agents has only the built-in demo agents.
BARE_MODULES = "workers.agents"


def _start(s: EmbeddedStack, name: str, modules: str, concurrency: int = 1) -> None:
    """Start one worker with its own ORCH_AGENT_MODULES and wait until it beats."""
    s.extra_env["ORCH_AGENT_MODULES"] = modules
    try:
        s.start_worker(name, concurrency=concurrency)
    finally:
        del s.extra_env["ORCH_AGENT_MODULES"]
    s.wait_ready([name], 30)


@pytest.fixture(scope="module")
def mixed() -> Iterator[EmbeddedStack]:
    """A coordinator, worker1 with every test agent (2 slots) and 'bare' without them."""
    s = _stack(name="routing", workers=1, concurrency=2, extra_env={"ORCH_HEARTBEAT_S": "1"})
    try:
        _start(s, "bare", BARE_MODULES, concurrency=2)
        # Consuming, not only beating: otherwise worker1 alone could take every message.
        wait_for(lambda: " ready." in s.log("bare"), 15, "bare to consume")
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def client(mixed: EmbeddedStack) -> Iterator[Orchestrator]:
    o = Orchestrator(broker_url=mixed.url, key_prefix=mixed.key_prefix)
    yield o
    o.close()


def test_a_mixed_pool_loses_nothing(mixed: EmbeddedStack, client: Orchestrator) -> None:
    # Each busy for a while: worker1's 2 slots cannot take all 6 before bare could take one.
    tasks = [Task("echo", {"text": f"m{i}", "spin_s": 0.3}) for i in range(6)]
    res = client.spawn(tasks).wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert [r.output["text"] for r in res.results] == [f"m{i}" for i in range(6)]  # type: ignore[index]
    assert {r.worker.split("@")[0] for r in res.results} == {"worker1"}
    assert "agents.echo" not in mixed.log("bare")  # never received, not even handed back


def test_a_task_on_a_queue_of_a_worker_without_its_agent_is_handed_back(
    mixed: EmbeddedStack, client: Orchestrator
) -> None:
    # A client whose coordinator nobody runs: the member is sent by hand, to a queue only the
    # bare worker consumes (as an older build's routing would have sent it).
    idle = Orchestrator(
        Settings(
            broker_url=mixed.url,
            key_prefix=mixed.key_prefix,
            coordinator_queue=f"nobody-{uuid.uuid4().hex[:6]}",
        )
    )
    # A worker without the tests' agents, alone on a queue of its own (worker1 consumes the
    # built-in agents' queues too, so only this queue reaches the worker that lacks echo).
    only_here = f"agents.only-here-{uuid.uuid4().hex[:6]}"
    mixed.extra_env["ORCH_AGENT_MODULES"] = BARE_MODULES
    try:
        mixed.start_worker("handback", concurrency=1, queues=only_here)
    finally:
        del mixed.extra_env["ORCH_AGENT_MODULES"]
    mixed.wait_ready(["handback"], 30)
    wait_for(lambda: " ready." in mixed.log("handback"), 15, "handback to consume")
    try:
        run = idle.spawn([Task("echo", {"text": "lost?"})], preflight="off")
        meta = TaskMeta(pattern=Pattern.SPAWN, n=1, queued_at=time.time(), deadline_at=4e9)
        idle.app.send_task(
            "agents.echo",
            task_id=f"{run.id}.0",
            queue=only_here,
            kwargs={
                "run_id": run.id,
                "index": 0,
                "payload": {"text": "lost?"},
                "meta": meta.model_dump(mode="json"),
            },
            priority=3,
        )
        res = client.get_run(run.id).wait(timeout_s=20)
        assert res.status is RunStatus.SUCCEEDED, res.error
        assert res.results[0].worker.startswith("worker1@")
        # The worker logs the hand-back after publishing it: the run may end first.
        line = f"handed task agents.echo {run.id}.0 back to queue 'agents.echo'"
        wait_for(lambda: line in mixed.log("handback"), 10, "the hand-back line")
        assert client.store.dead_letters().total == 0
    finally:
        idle.close()
        mixed.stop_process("handback")


def _served_then_gone(mixed: EmbeddedStack, name: str) -> None:
    """late_echo in the catalog (a worker had it) and no live worker with it (scaled to 0)."""
    _start(mixed, name, "tests.agents_routing_late")
    mixed.stop_process(name)
    wait_for(lambda: name not in mixed.online(), 15, f"{name} to leave")


def test_scale_from_zero(mixed: EmbeddedStack, client: Orchestrator) -> None:
    _served_then_gone(mixed, "late1")
    run = client.spawn([Task("late_echo", {"text": f"z{i}"}) for i in range(3)])
    unserved = [e for e in read_events(client.store, run.id) if e.type == "unserved"]
    assert [json.loads(e.data["agents"]) for e in unserved] == [["late_echo"]]
    _start(mixed, "late2", "tests.agents_routing_late")
    try:
        res = run.wait(timeout_s=30)
        assert res.status is RunStatus.SUCCEEDED, res.error
        assert {r.worker.split("@")[0] for r in res.results} == {"late2"}
    finally:
        mixed.stop_process("late2")


def test_a_run_whose_agent_no_worker_serves_times_out_saying_so(
    mixed: EmbeddedStack, client: Orchestrator
) -> None:
    _served_then_gone(mixed, "late3")
    queue = client.store.keys.queue("agents.late_echo")
    before = client.store.r.llen(queue)  # an earlier test's message may still wait there
    run = client.spawn([Task("late_echo", {"text": "t"})], deadline_s=1)
    res = run.wait(timeout_s=20)
    assert res.status is RunStatus.TIMED_OUT
    assert res.error is not None
    assert "#0 late_echo never started: no live worker serves agent late_echo" in res.error
    assert "start a worker whose ORCH_AGENT_MODULES has that agent" in res.error
    # Its message waits in the agent's queue for a worker that has it: nobody else took it.
    assert client.store.r.llen(queue) == before + 1
    client.store.r.delete(queue)


def test_an_agent_nobody_serves_any_more_is_unknown(mixed: EmbeddedStack) -> None:
    _start(mixed, "gone", "tests.agents_routing_gone")
    stale = Orchestrator(
        Settings(broker_url=mixed.url, key_prefix=mixed.key_prefix, catalog_stale_s=3)
    )
    try:
        assert stale.spawn([Task("vanishing", {"text": "x"})]).wait(timeout_s=20).ok
        mixed.stop_process("gone")
        stopped = time.time()

        def refused() -> UnknownAgent | None:
            try:
                stale.spawn([Task("vanishing", {"text": "y"})], preflight="off")
            except UnknownAgent as exc:
                return exc
            return None

        exc = wait_for(refused, 15, "the catalog to drop 'vanishing'")
        assert isinstance(exc, UnknownAgent)
        assert "no longer served" in str(exc) and "by gone@" in str(exc)
        assert exc.last_served_by is not None and exc.last_served_by.startswith("gone@")
        assert exc.last_served_at is not None and stopped - 5 < exc.last_served_at <= stopped
        assert stale.spawn([Task("echo", {"text": "still here"})]).wait(timeout_s=20).ok
    finally:
        stale.close()


def test_preflight_counts_only_the_slots_that_serve_the_plan(client: Orchestrator) -> None:
    pf = client.preflight("parallel-spawn", [Task("echo", {"text": f"p{i}"}) for i in range(4)])
    assert pf.slots == {"agents.echo": 2}  # worker1's 2, not bare's 2
    demo = client.catalog.get(AgentKind.AGENT, "module_stats")
    assert sorted(w.hostname.split("@")[0] for w in client.catalog.serving(demo)) == [
        "bare",
        "worker1",
    ]


def test_check_names_a_worker_that_serves_no_agent(mixed: EmbeddedStack) -> None:
    _start(mixed, "empty", "tests.agents_routing_none")
    try:
        host = mixed.online()["empty"].hostname
        env = {"ORCH_BROKER_URL": mixed.url, "ORCH_KEY_PREFIX": mixed.key_prefix}
        alone = CliRunner().invoke(main, ["check", "--role", "worker", "--hostname", host], env=env)
        assert alone.exit_code == 3, alone.output
        assert f"live worker(s) {host} serve no agent" in alone.output
        assert "live worker: none" in alone.output
        fleet = CliRunner().invoke(main, ["check", "--role", "worker"], env=env)
        assert fleet.exit_code == 0, fleet.output
        assert f"live worker(s) {host} serve no agent" in fleet.output
        live = [line for line in fleet.output.splitlines() if line.startswith("redis ")]
        assert len(live) == 1 and host not in live[0]  # not among the live ones
    finally:
        mixed.stop_process("empty")
