"""``async def`` agents on real worker processes, reading a real loopback HTTP server that
streams like a model endpoint (tests/model_server.py): the three patterns, many in flight on
one process, cancellation that closes the connection, deadlines, a loop blocked by mistake,
and redelivery after the worker process dies."""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator

import pytest

from orchestrator import AgentStatus, EmbeddedStack, Orchestrator, RunStatus, Task
from tests.conftest import AGENT_MODULES, _stack, client_for, stack_for, wait_for
from tests.model_server import ModelServer, StreamRecord

pytestmark = pytest.mark.integration

MODULES = [*AGENT_MODULES, "tests.agents_async"]


@pytest.fixture(scope="module")
def one_process() -> Iterator[EmbeddedStack]:
    """ONE worker process (a single prefork slot, default async settings but a short block
    limit) and a coordinator."""
    yield from stack_for(
        name="async",
        workers=1,
        concurrency=1,
        agent_modules=MODULES,
        extra_env={"ORCH_AIO__BLOCKED_WARN_S": "0.3", "ORCH_AIO__BLOCKED_LIMIT_S": "2"},
    )


@pytest.fixture(scope="module")
def o(one_process: EmbeddedStack) -> Iterator[Orchestrator]:
    yield from client_for(one_process)


def _stream(model: ModelServer, chunks: int = 10, interval_ms: int = 20) -> Task:
    payload = {
        "url": model.url,
        "stream_id": uuid.uuid4().hex,
        "chunks": chunks,
        "interval_ms": interval_ms,
    }
    return Task("async.stream", payload)


def _record(model: ModelServer, task: Task) -> StreamRecord:
    found = model.record(task.payload["stream_id"])
    assert found is not None, "the server never saw this stream"
    return found


def test_async_spawn_streams_every_subagent(o: Orchestrator, model: ModelServer) -> None:
    tasks = [_stream(model, chunks=5) for _ in range(20)]
    res = o.spawn(tasks, deadline_s=60).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert [e.output["chunks"] for e in res.results if e.output] == [5] * 20
    assert all(_record(model, t).completed for t in tasks)


def test_async_gather_merges_with_an_async_merger(o: Orchestrator) -> None:
    tasks = [Task("async.nap", {"seconds": 0.05, "text": f"t{i}"}) for i in range(6)]
    res = o.gather(tasks, merge="async.join", deadline_s=60).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.merged is not None
    assert res.merged["texts"] == [f"t{i}" for i in range(6)]


def test_an_async_batch_runs_its_items_at_once(o: Orchestrator) -> None:
    """A batch message of an async agent runs its items concurrently on the loop (not one
    after another), each with its own envelope and progress events."""
    tasks = [Task("async.nap", {"seconds": 0.5, "text": str(i)}) for i in range(8)]
    run = o.spawn(tasks, deadline_s=60, batch_size=4)
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    batches = [res.results[:4], res.results[4:]]
    for batch in batches:
        latest_start = max(e.started_at or 0.0 for e in batch)
        earliest_end = min(e.finished_at or 0.0 for e in batch)
        assert latest_start < earliest_end, "the items of one batch did not overlap"
    progressed = {
        int(f["index"]) for _, f in o.store.events_after(run.id) if f.get("type") == "progress"
    }
    assert progressed == set(range(8))  # ctx.progress from async agents, off the loop


def test_a_wide_run_of_async_agents_is_batched_by_default(o: Orchestrator) -> None:
    """More than ORCH_AIO__BATCH_SIZE (50) async subagents go 50 a message; asked for, one a
    message; a run with a sync agent, or a race, is never batched for it."""
    naps = [Task("async.nap", {"seconds": 0.05, "text": str(i)}) for i in range(60)]
    batched = o.spawn(naps, deadline_s=60)
    single = o.spawn(naps, deadline_s=60, batch_size=1)
    mixed = o.spawn([*naps, Task("echo", {"text": "sync"})], deadline_s=60)
    for run in (batched, single, mixed):
        assert run.wait(timeout_s=60).status is RunStatus.SUCCEEDED
    assert o.store.record(batched.id).get("batching") == "50"
    assert not o.store.record(single.id).get("batching")
    assert not o.store.record(mixed.id).get("batching")


def test_sync_and_async_agents_mix_in_one_run(o: Orchestrator) -> None:
    tasks = [Task("echo", {"text": "sync"}), Task("async.nap", {"seconds": 0.05, "text": "a"})]
    res = o.spawn(tasks, deadline_s=60).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert [e.status for e in res.results] == [AgentStatus.OK, AgentStatus.OK]
    # The sync one ran in the pool's process, the async one in the worker's main process.
    assert res.results[0].output["pid"] != res.results[1].output["pid"]


def test_race_losers_connections_are_closed_mid_stream(o: Orchestrator, model: ModelServer) -> None:
    fast = _stream(model, chunks=2, interval_ms=50)
    slow = [_stream(model, chunks=200, interval_ms=50) for _ in range(3)]
    run = o.race([fast, *slow], validate="async.has_chunks", deadline_s=60)
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.winner is not None and res.winner.index == 0
    for task, env in zip(slow, res.results[1:], strict=True):
        assert env.status is AgentStatus.CANCELLED, env
        rec = wait_for(
            lambda t=task: (r := _record(model, t)).disconnected_at is not None and r,  # type: ignore[misc]
            5,
            "the server to see the loser's connection close",
        )
        assert isinstance(rec, StreamRecord)
        assert not rec.completed
        assert rec.chunks_sent < 200
        assert env.cancel_requested_at is not None
        assert rec.disconnected_at is not None and rec.disconnected_at >= env.cancel_requested_at


def test_300_async_subagents_in_flight_on_one_process(o: Orchestrator, model: ModelServer) -> None:
    """One worker process of a single prefork slot, default ORCH_AIO__MAX_IN_FLIGHT (500):
    all 300 streams are open at the same moment."""
    before = model.max_concurrent
    # 8 s each: on a loaded machine the 300 starts spread over seconds, yet they all overlap.
    tasks = [_stream(model, chunks=40, interval_ms=200) for _ in range(300)]
    res = o.spawn(tasks, deadline_s=120).wait(timeout_s=120)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert len({e.output["pid"] for e in res.results if e.output}) == 1
    assert model.max_concurrent >= 300 > before


def test_deadline_cancels_an_awaiting_subagent(o: Orchestrator, model: ModelServer) -> None:
    """A subagent awaiting its HTTP stream when the deadline passes is stopped at that await:
    the run times out and the server sees the connection close long before the stream's end."""
    task = _stream(model, chunks=600, interval_ms=100)  # a minute of streaming
    res = o.spawn([task], deadline_s=1.5).wait(timeout_s=30)
    assert res.status is RunStatus.TIMED_OUT, res
    env = res.results[0]
    assert env.status is AgentStatus.CANCELLED, env
    rec = wait_for(
        lambda: (r := _record(model, task)).disconnected_at is not None and r,
        5,
        "the server to see the connection close",
    )
    assert isinstance(rec, StreamRecord) and not rec.completed and rec.chunks_sent < 100


def test_cancel_reaches_an_awaiting_subagent(o: Orchestrator) -> None:
    run = o.spawn([Task("async.nap", {"seconds": 60})], deadline_s=60)
    wait_for(lambda: o.store.started_by(run.id), 10, "the subagent to start")
    run.cancel()
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.CANCELLED
    assert res.results[0].status is AgentStatus.CANCELLED


def test_an_agent_blocking_the_loop_is_named_and_stopped(
    o: Orchestrator, one_process: EmbeddedStack
) -> None:
    blocker = Task("async.nap", {"seconds": 0, "block_loop": True})
    others = [Task("async.nap", {"seconds": 0.2, "text": str(i)}) for i in range(5)]
    res = o.spawn([blocker, *others], deadline_s=60).wait(timeout_s=60)
    env = res.results[0]
    assert env.status is AgentStatus.ERROR, env
    assert env.error is not None and env.error.type == "LoopBlocked"
    assert "agents_async.py" in env.error.message and "time.sleep" in env.error.message
    assert [e.status for e in res.results[1:]] == [AgentStatus.OK] * 5
    log = (one_process.log_dir / "worker1.log").read_text()
    assert "has blocked the event loop of async subagents" in log
    assert "agent 'async.nap'" in log


def test_a_busy_loop_is_not_a_blocked_one(o: Orchestrator, one_process: EmbeddedStack) -> None:
    """60 subagents of short CPU bursts keep the loop busy for seconds (each of its turns runs
    them all: longer than the 2 s block limit), yet no step of any agent is long: nobody is
    named, nobody stopped."""
    log_before = len((one_process.log_dir / "worker1.log").read_text())
    busy = {"seconds": 0, "bursts": 2, "burst_ms": 40}
    tasks = [Task("async.nap", {**busy, "text": str(i)}) for i in range(60)]
    res = o.spawn(tasks, deadline_s=60, batch_size=60).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    log = (one_process.log_dir / "worker1.log").read_text()[log_before:]
    assert "has blocked the event loop" not in log


def test_async_subagents_of_a_killed_worker_are_run_again() -> None:
    """The worker's main process (where async subagents run) dies mid-run: its heartbeat goes
    silent, the coordinator sends what it had started again, the other worker runs it."""
    s = _stack(
        name="asynckill",
        workers=2,
        concurrency=1,
        agent_modules=MODULES,
        # Four at once per process: the eight subagents are shared by both workers.
        extra_env={
            "ORCH_HEARTBEAT_S": "0.5",
            "ORCH_LOST_WORKER_S": "2",
            "ORCH_AIO__MAX_IN_FLIGHT": "4",
        },
    )
    o = Orchestrator(broker_url=s.url, key_prefix=s.key_prefix)
    try:
        run = o.spawn([Task("async.nap", {"seconds": 4, "text": str(i)}) for i in range(8)])

        def started_on_both() -> dict[int, str] | None:
            by = o.store.started_by(run.id)
            on2 = any(w.startswith("worker2@") for w in by.values())
            return by if len(by) == 8 and on2 else None

        by = wait_for(started_on_both, 20, "every subagent started, some on worker2")
        assert isinstance(by, dict)
        victims = sorted(i for i, w in by.items() if w.startswith("worker2@"))
        os.killpg(s.procs["worker2"].pid, signal.SIGKILL)
        s.procs.pop("worker2").wait(timeout=10)
        res = run.wait(timeout_s=60)
        assert res.status is RunStatus.SUCCEEDED, res.error
        for i in victims:
            env = res.results[i]
            assert env.status is AgentStatus.OK
            assert env.attempt == 2 and env.worker is not None and env.worker.startswith("worker1@")
    finally:
        o.close()
        s.stop()


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_async_agents_under_other_pools(pool: str) -> None:
    """Our threads pool runs async subagents on the loop too (more in flight than its one
    slot); Celery's solo pool runs them one per slot, each waiting for its coroutine."""
    s = _stack(name=f"async-{pool}", workers=1, concurrency=1, pool=pool, agent_modules=MODULES)
    o = Orchestrator(broker_url=s.url, key_prefix=s.key_prefix)
    try:
        tasks = [Task("async.nap", {"seconds": 0.5, "text": str(i)}) for i in range(4)]
        res = o.spawn(tasks, deadline_s=60).wait(timeout_s=60)
        assert res.status is RunStatus.SUCCEEDED, res.error
        latest_start = max(e.started_at or 0.0 for e in res.results)
        earliest_end = min(e.finished_at or 0.0 for e in res.results)
        overlapped = latest_start < earliest_end
        assert overlapped is (pool == "threads")
    finally:
        o.close()
        s.stop()
