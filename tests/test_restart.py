"""A state server that restarts without persistence, or freezes: what survives, what says so
(real processes: a stack of its own whose server these tests restart and SIGSTOP)."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from click.testing import CliRunner, Result

from orchestrator import (
    AgentResult,
    AgentStatus,
    BrokerUnavailable,
    EmbeddedRedis,
    EmbeddedStack,
    InvalidRequest,
    Orchestrator,
    Pattern,
    RoiReport,
    Run,
    RunLost,
    RunResult,
    RunStatus,
    RunTimedOut,
    Settings,
    Task,
    UnknownAgent,
)
from orchestrator.cli.commands import main
from tests.conftest import AGENT_MODULES, _stack, wait_for
from workers.models import WorkerInfo
from workers.store import RunStore

pytestmark = pytest.mark.integration

#: Heartbeats (and so catalog republication) this often in the stack under test.
HEARTBEAT_S = 0.5


@pytest.fixture(scope="module")
def rs() -> Iterator[EmbeddedStack]:
    """One worker and a coordinator whose server the tests restart and freeze."""
    s = _stack(
        name="restart",
        workers=1,
        concurrency=2,
        extra_env={"ORCH_HEARTBEAT_S": str(HEARTBEAT_S)},
    )
    try:
        yield s
    finally:
        s.stop()


def _client(s: EmbeddedStack, timeout_s: float = 5.0) -> Orchestrator:
    return Orchestrator(
        Settings(broker_url=s.url, key_prefix=s.key_prefix, client_timeout_s=timeout_s)
    )


def _restart(server: EmbeddedRedis | None) -> None:
    """Stop an embedded server and start it again on the same port, with nothing kept."""
    assert server is not None and not server.persist
    server.stop()
    server.dir.mkdir(parents=True, exist_ok=True)  # stop() removed it with the data
    server.start()


@contextmanager
def _frozen(pid: int) -> Iterator[None]:
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _check(url: str, prefix: str, *args: str, timeout_s: float = 5.0) -> Result:
    """`orchestrator check ...` (in this process) with a worker's environment."""
    env = {
        "ORCH_BROKER_URL": url,
        "ORCH_KEY_PREFIX": prefix,
        "ORCH_AGENT_MODULES": ",".join(AGENT_MODULES),
        "ORCH_HEARTBEAT_S": str(HEARTBEAT_S),
        "ORCH_CLIENT_TIMEOUT_S": str(timeout_s),
    }
    return CliRunner().invoke(main, ["check", *args], env=env)


def _raised_in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[object]]:
    """Run ``fn`` in a thread; the list gets (exception or result, seconds taken)."""
    out: list[object] = []

    def target() -> None:
        started = time.monotonic()
        try:
            out.append(fn())
        except BaseException as exc:
            out.append(exc)
        out.append(time.monotonic() - started)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def test_restart_without_persistence_the_catalog_comes_back(rs: EmbeddedStack) -> None:
    with _client(rs) as before:
        assert before.spawn([Task("echo", {"text": "before"})]).wait(timeout_s=30).ok
    _restart(rs.redis)
    o = _client(rs)  # nothing cached: it sees the catalog as the restarted server has it
    try:

        def submitted() -> Run | None:
            try:
                return o.spawn([Task("echo", {"text": "after restart"})], deadline_s=30)
            except UnknownAgent:
                return None  # transient: the workers publish the catalog again

        run = wait_for(submitted, 8 * HEARTBEAT_S, "the catalog to be published again")
        assert isinstance(run, Run)
        res = run.wait(timeout_s=30)
        assert res.status is RunStatus.SUCCEEDED, res.error
        r, k = o.store.r, o.store.keys
        assert r.ttl(k.run(run.id)) > 0 and r.ttl(k.events(run.id)) > 0
    finally:
        o.close()


def _open_run(o: Orchestrator, run_id: str, deadline_s: float = 60) -> Run:
    """A run with a record and nothing running: what a server can forget under its waiters."""
    now = time.time()
    o.store.create_run(
        {
            "run_id": run_id,
            "pattern": "parallel-spawn",
            "n": 1,
            "created_at": repr(now),
            "deadline_at": repr(now + deadline_s),
            "agents": ["echo"],
            "status": "running",
        }
    )
    return Run(o, run_id)


def _writers(store: RunStore, run_id: str) -> dict[str, Callable[[], object]]:
    """Every store write that may recreate a run's keys on a server that lost them."""
    now = time.time()
    env = AgentResult(
        index=0, task_id=f"{run_id}.0", agent="echo", status=AgentStatus.OK, started_at=now,
        finished_at=now, queued_at=now,
    )  # fmt: skip
    report = RoiReport(
        n=1, wall_s=0, sequential_estimate_s=0, speedup=1, efficiency=1, work_spent_s=0,
        work_wasted_s=0, coordinator_overhead_s=0,
    )  # fmt: skip
    result = RunResult(
        run_id=run_id, pattern=Pattern.SPAWN, status=RunStatus.FAILED, results=[env],
        created_at=now, finished_at=now, report=report,
    )  # fmt: skip

    def start() -> object:  # start.lua runs only for a run with a record
        store.set_run_field_once(run_id, "run_id", run_id)
        return store.start_task(run_id, 0, "w@h")

    return {
        "event (progress, resent, merged)": lambda: store.event(run_id, "progress", index="0"),
        "update_run": lambda: store.update_run(run_id, status="running"),
        "set_run_field_once": lambda: store.set_run_field_once(run_id, "x", "1"),
        "start.lua": start,
        # finish.lua writes nothing for a run whose record is gone (no partial record): the
        # record's first field is back, as after start.lua.
        "finish.lua": lambda: (
            store.set_run_field_once(run_id, "n", "1"),
            store.finish_task(run_id, env, claim=True),
        ),
        "request_cancel": lambda: store.request_cancel(
            run_id, "stop", ending=RunStatus.CANCELLED, event={"type": "won", "index": "0"}
        ),
        "request_cancel (subtasks)": lambda: store.request_cancel(run_id, "stop", indices=[0]),
        "record_expanded": lambda: store.record_expanded(
            run_id, expanded_at=now, n=1, samples=[], payloads=[{}], batches=[[0]]
        ),
        "merge_inputs": lambda: store.merge_inputs(run_id, now),
        "mark_merger_sent": lambda: store.mark_merger_sent(run_id, now),
        "claim_merger_send": lambda: store.claim_merger_send(run_id, now),
        "mark_resent": lambda: store.mark_resent(run_id, "0", "w@h"),
        "finalize.lua": lambda: store.store_result(result, in_hash=False),
    }


def test_writes_after_a_restart_recreate_run_keys_with_their_ttl(server: EmbeddedRedis) -> None:
    o = Orchestrator(broker_url=server.url, key_prefix="ttl")
    try:
        _open_run(o, "r1")
        _restart(server)
        r, keys = o.store.r, o.store.keys.run_keys("r1")
        without_ttl = {}
        for name, write in _writers(o.store, "r1").items():
            r.flushdb()  # what a restart without persistence leaves behind
            write()
            written = [key for key in keys if r.exists(key)]
            assert written, f"{name} wrote no key of the run"
            if missing := [key for key in written if r.ttl(key) == -1]:
                without_ttl[name] = missing
        assert not without_ttl, without_ttl
    finally:
        o.close()


def test_a_run_the_restarted_server_forgot_raises_run_lost_in_every_waiter(
    server: EmbeddedRedis,
) -> None:
    o = Orchestrator(broker_url=server.url, key_prefix="lost")
    try:
        run = _open_run(o, "r1", deadline_s=60)

        async def follow() -> list[str]:
            return [e.type async for e in run.events()]

        waiters = [
            _raised_in_thread(lambda: run.wait(timeout_s=40)),
            _raised_in_thread(lambda: asyncio.run(run.wait_async(timeout_s=40))),
            _raised_in_thread(lambda: asyncio.run(follow())),
        ]
        # Two event loops (one XREAD each) and the blocking wait() are all blocked.
        wait_for(
            lambda: int(o.store.r.info("clients")["blocked_clients"]) >= 3,
            10,
            "every waiter to block on its read",
        )
        _restart(server)
        for thread, out in waiters:
            thread.join(timeout=20)
            assert not thread.is_alive(), "a waiter still waits on a run the server forgot"
            exc, took_s = out
            assert isinstance(exc, RunLost), repr(exc)
            assert exc.run_id == run.id and "persistence" in str(exc)
            assert isinstance(took_s, float) and took_s < 15  # not the deadline's 60 s
    finally:
        o.close()


def test_frozen_server_every_client_call_keeps_its_limit(server: EmbeddedRedis) -> None:
    o = Orchestrator(Settings(broker_url=server.url, key_prefix="frozen", client_timeout_s=1.5))
    assert server.proc is not None
    try:
        run = _open_run(o, "r1")
        with _frozen(server.proc.pid):
            waits: list[Callable[[], object]] = [
                lambda: run.wait(timeout_s=2),
                lambda: asyncio.run(run.wait_async(timeout_s=2)),
            ]
            for wait in waits:
                started = time.monotonic()
                with pytest.raises((RunTimedOut, BrokerUnavailable)):
                    wait()
                assert time.monotonic() - started < 3.0

            calls: list[Callable[[], object]] = [
                lambda: o.spawn([Task("echo", {"text": "frozen"})]),
                run.status,
            ]
            for call in calls:
                started = time.monotonic()
                with pytest.raises(BrokerUnavailable):
                    call()
                assert time.monotonic() - started < 1.5 + 1.0

            started = time.monotonic()
            out = _check(server.url, "frozen", "--role", "worker", timeout_s=1.0)
            assert out.exit_code == 1 and "cannot reach" in out.output, out.output
            assert time.monotonic() - started < 1.0 + 1.5
        # Back: the same client goes on.
        assert run.status().status is RunStatus.RUNNING
    finally:
        o.close()


def test_check_fails_while_the_catalog_is_gone_or_the_sweeper_cannot_run(
    rs: EmbeddedStack,
) -> None:
    o = _client(rs)
    try:
        wait_for(
            lambda: _check(rs.url, rs.key_prefix, "--role", "worker").exit_code == 0,
            10,
            "a healthy worker",
        )
        # Frozen, the worker cannot publish the catalog again: check says what is missing.
        with _frozen(rs.procs["worker1"].pid):
            o.store.r.delete(o.store.keys.catalog)
            out = _check(rs.url, rs.key_prefix, "--role", "worker")
            assert out.exit_code == 3 and "catalog lacks" in out.output, out.output
        wait_for(
            lambda: _check(rs.url, rs.key_prefix, "--role", "worker").exit_code == 0,
            10,
            "the republish",
        )

        ok = _check(rs.url, rs.key_prefix, "--role", "coordinator")
        assert ok.exit_code == 0, ok.output
        # A coordinator that beats but has never swept fails at once...
        ghost = WorkerInfo(
            hostname="ghost-coordinator@nowhere",
            role="coordinator",
            queues=[],
            pool="threads",
            concurrency=1,
            pid=0,
            heartbeat_at=time.time(),
        )
        o.store.beat(ghost)
        out = _check(rs.url, rs.key_prefix, "--role", "coordinator", "--hostname", ghost.hostname)
        o.store.leave(ghost.hostname)
        assert out.exit_code == 3 and "no sweeper round" in out.output, out.output
        # ...and a frozen one fails within a few seconds, while its heartbeat still looks fresh.
        with _frozen(rs.procs["coordinator"].pid):
            stalled = wait_for(
                lambda: (
                    (out := _check(rs.url, rs.key_prefix, "--role", "coordinator")).exit_code == 3
                    and out
                ),
                10,
                "check to see the sweeper stalled",
            )
            assert isinstance(stalled, Result) and "no sweeper round" in stalled.output
            assert "coordinator@" in stalled.output  # its heartbeat alone still looked fine
        wait_for(
            lambda: _check(rs.url, rs.key_prefix, "--role", "coordinator").exit_code == 0,
            10,
            "the sweeper to run",
        )
    finally:
        o.close()


def test_a_payload_nested_too_deep_is_refused_at_submit(rs: EmbeddedStack) -> None:
    o = _client(rs)
    try:
        deep: dict[str, Any] = {"text": "x"}
        for _ in range(300):
            deep = {"text": "x", "inner": deep}
        for call in (
            lambda: o.spawn([Task("echo", deep)]),
            lambda: o.preflight("parallel-spawn", [Task("echo", deep)]),
        ):
            with pytest.raises(InvalidRequest, match="levels deep"):
                call()
        # A list nests too, and a payload within the limit goes through.
        assert o.spawn([Task("echo", {"text": "flat", "x": [[[1]]]})]).wait(timeout_s=30).ok
    finally:
        o.close()


def test_an_envelope_after_the_server_lost_its_run_writes_no_partial_record(
    rs: EmbeddedStack, tmp_marker: Callable[[str], str]
) -> None:
    """The server forgot a run while a subagent was running (as a restart without persistence
    does); the subagent's late envelope must not recreate a partial record (a run of 0 that the
    last-report rule would then try to end, raising KeyError in the worker)."""
    o = _client(rs)
    try:
        marker = tmp_marker("late")
        run = o.spawn([Task("work", {"seconds": 1.5, "marker": marker, "mode": "sleep"})])
        wait_for(lambda: run.status().started == 1, 15, "the subagent to start")
        for key in o.store.keys.run_keys(run.id):
            o.store.r.delete(key)  # what the server lost
        wait_for(lambda: os.path.exists(marker), 15, "the agent to finish its work")
        wait_for(lambda: f"{run.id}.0] succeeded" in rs.log("worker1"), 15, "its task to end")
        assert not o.store.run_exists(run.id)
        assert "KeyError" not in rs.log("worker1")
    finally:
        o.close()


def test_a_worker_holding_a_message_survives_a_broker_restart(
    tmp_marker: Callable[[str], str],
) -> None:
    """The broker restarts while a worker runs (and so holds unacknowledged) a subagent: the
    worker must reconnect, not die (kombu's reconnect of its pub/sub channel read a closed
    connection and raised AttributeError, which Celery treats as unrecoverable)."""
    s = _stack(name="restart-held", workers=1, concurrency=2)
    try:
        assert s.redis is not None
        o = _client(s)
        try:
            held = [
                o.spawn(
                    [Task("work", {"seconds": 2, "marker": tmp_marker(f"h{i}"), "mode": "sleep"})]
                )
                for i in range(2)
            ]
            wait_for(lambda: all(r.status().started == 1 for r in held), 15, "both running")
        finally:
            o.close()
        _restart(s.redis)
        worker = s.procs["worker1"]
        after = _client(s)
        try:

            def ran() -> bool:
                assert worker.poll() is None, f"worker1 died:\n{s.tail('worker1')}"
                try:
                    run = after.spawn([Task("echo", {"text": "after"})], deadline_s=20)
                except UnknownAgent:
                    return False  # the catalog is being published again
                return run.wait(timeout_s=20).ok

            wait_for(ran, 40, "a run on the worker after the restart")
            assert worker.poll() is None and "Unrecoverable error" not in s.log("worker1")
        finally:
            after.close()
    finally:
        s.stop()
