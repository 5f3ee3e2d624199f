"""Faults with nothing lost: every subtask accounted for, every run ends (real processes)."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from orchestrator import (
    AgentStatus,
    EmbeddedRedis,
    EmbeddedStack,
    Orchestrator,
    Run,
    RunStatus,
    Settings,
    Task,
)
from tests.conftest import _stack, wait_for
from workers.app import create_app
from workers.models import AgentKind, Pattern, TaskMeta
from workers.names import Keys
from workers.patterns.gather import merge_signature, merger_message
from workers.patterns.members import SEND_BATCH, send_members

pytestmark = pytest.mark.integration


@pytest.fixture
def own_stack() -> Iterator[EmbeddedStack]:
    """A stack of its own: these tests kill its processes."""
    s = _stack(name="faults", workers=1, concurrency=2)
    try:
        yield s
    finally:
        s.stop()


def _client(s: EmbeddedStack) -> Orchestrator:
    return Orchestrator(broker_url=s.url, key_prefix=s.key_prefix)


def test_worker_process_killed_mid_task_is_redelivered_and_completes(
    own_stack: EmbeddedStack, tmp_marker: Callable[[str], str]
) -> None:
    o = _client(own_stack)
    marker = tmp_marker("killed")
    run = o.spawn(
        [Task("work", {"seconds": 1.5, "marker": marker}), Task("echo", {"text": "bystander"})],
        deadline_s=60,
    )
    pid = int(
        wait_for(
            lambda: Path(marker + ".pid").exists() and Path(marker + ".pid").read_text(),
            15,
            "the task to start",
        )
    )
    Path(marker + ".pid").unlink()
    os.kill(pid, signal.SIGKILL)  # the pool process dies mid-task, as in an OOM kill
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    env = res.results[0]
    assert env.status is AgentStatus.OK
    assert env.attempt == 2  # ran again after the redelivery
    assert int(Path(marker + ".pid").read_text()) != pid
    assert Path(marker).exists()
    assert len(o.store.envelopes(run.id)) == 2
    o.close()


@pytest.mark.parametrize("pattern", ["gather", "race"])
def test_coordinator_killed_mid_run_does_not_stop_the_run(
    own_stack: EmbeddedStack, tmp_marker: Callable[[str], str], pattern: str
) -> None:
    o = _client(own_stack)
    if pattern == "gather":
        run = o.gather(
            [Task("echo", {"text": t, "spin_s": 0.5}) for t in "abc"], merge="join", deadline_s=60
        )
    else:
        run = o.race(
            [
                Task("echo", {"text": "bad", "spin_s": 0.3}),
                Task("echo", {"text": "good", "spin_s": 0.6}),
            ],
            validate="starts_good",
            deadline_s=60,
        )
    wait_for(lambda: run.status().started >= 1, 15, "subtasks to start")
    proc = own_stack.procs["coordinator"]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    if pattern == "gather":
        assert res.merged == {"texts": ["a", "b", "c"]}
    else:
        assert res.winner is not None and res.winner.output["text"] == "good"
    # A run submitted while no coordinator is up waits in the broker, nothing lost...
    queued = o.spawn([Task("echo", {"text": "queued"})])
    own_stack.procs.pop("coordinator")
    own_stack.start_process("coordinator", ["coordinator", "--hostname", "coordinator@%h"])
    own_stack.wait_ready(["coordinator"], 30)
    # ...and the restarted coordinator serves it; wait() and status() work for both runs.
    assert queued.wait(timeout_s=30).outputs()[0]["text"] == "queued"
    assert o.get_run(run.id).status().status is RunStatus.SUCCEEDED
    assert o.get_run(run.id).wait(timeout_s=5) == res
    o.close()


def test_redis_restart_mid_run_reconnects_and_completes(tmp_marker: Callable[[str], str]) -> None:
    server = EmbeddedRedis(persist=True).start()
    s = _stack(name="restart", workers=1, concurrency=2, broker_url=server.url)
    o = _client(s)
    try:
        tasks = [Task("work", {"seconds": 1.0, "marker": tmp_marker(f"r{i}")}) for i in range(4)]
        run = o.spawn(tasks, deadline_s=40)
        wait_for(lambda: run.status().started >= 2, 15, "subtasks to start")
        server.stop()
        server.start()  # same port, same data directory, append-only file replayed
        res = run.wait(timeout_s=60)
        # Running subtasks finish and record their envelopes through the restart; subtasks
        # whose messages were in flight come back or the deadline ends the run, saying so.
        if res.status is RunStatus.TIMED_OUT:
            assert res.error and "deadline of 40.0s passed" in res.error
        else:
            assert res.status is RunStatus.SUCCEEDED, res.error
        assert len(res.results) == 4
        # Workers and clients reconnected: a new run goes through.
        after = o.spawn([Task("echo", {"text": "after restart"})]).wait(timeout_s=60)
        assert after.status is RunStatus.SUCCEEDED, after.error
    finally:
        o.close()
        s.stop()
        server.persist = False
        server.stop()


def test_redelivered_after_reporting_is_merged_once_counted_once(orch: Orchestrator) -> None:
    run = orch.gather([Task("echo", {"text": t}) for t in "xyz"], merge="join")
    res = run.wait(timeout_s=30)
    assert res.merged == {"texts": ["x", "y", "z"]}
    before = orch.store.envelopes(run.id)
    # Deliver subtask #1's message again, as the broker does after a visibility timeout.
    meta = {"pattern": "gather-then-merge", "n": 3, "queued_at": 0, "deadline_at": 4e9}
    orch.app.send_task(
        "agents.echo",
        task_id=f"{run.id}.1",
        queue="agents.echo",
        kwargs={"run_id": run.id, "index": 1, "payload": {"text": "y"}, "meta": meta},
    )
    wait_for(
        lambda: orch.store.r.hget(orch.store.keys.attempts(run.id), "1") == "2",
        15,
        "the duplicate to be delivered",
    )
    assert orch.store.envelopes(run.id) == before
    assert orch.store.record(run.id)["done"] == "3"
    assert orch.get_run(run.id).wait(timeout_s=5).merged == res.merged


def _gather_whose_merger_was_never_sent(
    submitter: Orchestrator, sender: Orchestrator, texts: list[str]
) -> tuple[Run, Callable[[int], None]]:
    """Play the coordinator of a gather: send its members by hand while no merger is stored
    (so the last member's send finds nothing, as if its worker died first), wait for every
    envelope, then store the merger. Returns the run and a way to deliver member i again."""
    req = submitter.request(
        Pattern.GATHER, [Task("echo", {"text": t}) for t in texts], merge="join"
    )
    run = submitter.submit(req)
    meta = TaskMeta(pattern=Pattern.GATHER, n=len(texts), queued_at=time.time(), deadline_at=4e9)

    def deliver(i: int) -> None:
        sender.app.send_task(
            "agents.echo",
            task_id=f"{run.id}.{i}",
            queue="agents.echo",
            kwargs={
                "run_id": run.id,
                "index": i,
                "payload": {"text": texts[i]},
                "meta": meta.model_dump(mode="json"),
            },
        )

    for i in range(len(texts)):
        deliver(i)
    n = str(len(texts))
    wait_for(lambda: sender.store.record(run.id).get("done") == n, 15, "every envelope")
    # The members' tasks have returned too (their Celery results are stored after the body):
    # the last one's completion rule has looked for the merger and found none. Storing it
    # before that (a loaded machine) would let that member send it after all.
    wait_for(
        lambda: all(sender.app.AsyncResult(f"{run.id}.{i}").ready() for i in range(len(texts))),
        15,
        "the members' tasks to return",
    )
    merger = sender.catalog.get(AgentKind.MERGER, "join")
    message = merger_message(merge_signature(sender.app, req, merger, meta))
    sender.store.update_run(run.id, merger_message=message)
    return run, deliver


def test_merger_not_sent_by_a_dead_last_member_is_sent_by_its_redelivery(
    idle_orch: Orchestrator,
) -> None:
    """The member whose envelope completed a gather sends the merger; if its worker dies in
    between, the broker redelivers that member, and the redelivery sends it."""
    o = idle_orch  # nobody expands this run: the test plays the coordinator
    texts = ["p", "q", "r"]
    run, deliver = _gather_whose_merger_was_never_sent(o, o, texts)
    assert run.result() is None and "merger_sent_at" not in o.store.record(run.id)
    deliver(2)  # the broker redelivers the last member
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.merged == {"texts": texts}
    assert "merger_sent_at" in o.store.record(run.id)


def test_merger_nobody_sent_is_sent_by_a_coordinator() -> None:
    """The last member's whole machine died before it sent the merger, and its message comes
    back only after the visibility timeout: a coordinator sends the merger instead."""
    s = _stack(
        name="merger",
        workers=1,
        concurrency=2,
        extra_env={"ORCH_HEARTBEAT_S": "0.5", "ORCH_LOST_WORKER_S": "1.5"},
    )
    o = _client(s)
    # Submitted on a queue nobody consumes: the test plays the coordinator's expansion.
    idle = Orchestrator(
        Settings(broker_url=s.url, key_prefix=s.key_prefix, coordinator_queue="nobody-merger")
    )
    try:
        texts = ["u", "v", "w"]
        run, _ = _gather_whose_merger_was_never_sent(idle, o, texts)
        assert "all_reported_at" in o.store.record(run.id)
        res = run.wait(timeout_s=30)
        assert res.status is RunStatus.SUCCEEDED, res.error
        assert res.merged == {"texts": texts}
        kinds = [e["type"] for _, e in o.store.r.xrange(o.store.keys.events(run.id))]
        assert kinds.count("merger_resent") == 1
    finally:
        idle.close()
        o.close()
        s.stop()


def _two_single_slot_workers(name: str) -> tuple[EmbeddedStack, Orchestrator]:
    """Two worker 'machines' of one process each; a silent one counts as lost after 2 s."""
    s = _stack(
        name=name,
        workers=2,
        concurrency=1,
        extra_env={"ORCH_HEARTBEAT_S": "0.5", "ORCH_LOST_WORKER_S": "2"},
    )
    return s, _client(s)


def _lose_worker2_once_both_run(s: EmbeddedStack, o: Orchestrator, run: Run) -> int:
    """Once a subtask runs on each worker, kill worker2's whole process group (the machine);
    returns the index it was running."""
    started = wait_for(
        lambda: len(by := o.store.r.hgetall(o.store.keys.started_by(run.id))) == 2 and by,
        20,
        "a subtask to start on each worker",
    )
    [victim] = [int(i) for i, w in started.items() if w.startswith("worker2@")]  # type: ignore[union-attr]
    os.killpg(s.procs["worker2"].pid, signal.SIGKILL)  # main process and pool: the machine
    s.procs.pop("worker2").wait(timeout=10)
    return victim


@pytest.mark.parametrize("pattern", ["spawn", "gather"])
def test_lost_worker_machine_subtasks_are_sent_again(
    tmp_marker: Callable[[str], str], pattern: str
) -> None:
    """A whole worker machine dies mid-task: after its heartbeat goes silent the coordinator
    sends its started subtask again, another worker runs it, and the run succeeds."""
    s, o = _two_single_slot_workers("lostworker")
    try:
        markers = [tmp_marker(f"lost{i}") for i in range(2)]
        tasks = [Task("work", {"seconds": 2, "marker": m}) for m in markers]
        run = (
            o.spawn(tasks, deadline_s=60)
            if pattern == "spawn"
            else o.gather(tasks, merge="collect_done", deadline_s=60)
        )
        victim = _lose_worker2_once_both_run(s, o, run)
        res = run.wait(timeout_s=60)
        assert res.status is RunStatus.SUCCEEDED, res.error
        env = res.results[victim]
        assert env.status is AgentStatus.OK
        assert env.worker is not None and env.worker.startswith("worker1@")
        assert env.attempt == 2
        assert Path(markers[victim]).exists()
        if pattern == "gather":
            assert res.merged == {"texts": markers}
        resent = o.store.r.hgetall(o.store.keys.resent(run.id))
        assert list(resent) == [str(victim)] and resent[str(victim)].startswith("worker2@")
        # Its payload copy is gone with the run.
        assert not o.store.r.exists(o.store.keys.payloads(run.id))
    finally:
        o.close()
        s.stop()


def test_a_pipelined_send_cut_mid_way_still_sends_every_member(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The broker restarts while members are being sent: a pipelined flush fails, and the
    rest go one by one, riding out the restart; every member arrives."""
    server = EmbeddedRedis(persist=True).start()
    try:
        app = create_app(Settings(broker_url=server.url), load_agents=False)
        queue, n = "nobody-cut", 3000
        listed = Keys(app.orch_settings.key_prefix).queue(queue)  # the queue's Redis list
        members = [
            app.signature("agents.echo", kwargs={"i": i}, queue=queue, task_id=f"cut.{i}")
            for i in range(n)
        ]
        r = redis.Redis.from_url(server.url)
        restarted: list[bool] = []

        def restart(sent: int) -> None:
            # After the first full batch: the server goes down for a moment (the append-only
            # file keeps what it has), so the next pipelined flush meets it down, always.
            if not restarted:
                server.stop()
                restarted.append(True)
                threading.Timer(0.5, server.start).start()

        with caplog.at_level(logging.WARNING, logger="workers.patterns.members"):
            send_members(app, members, "cut-group", on_flush=restart)
        assert restarted
        assert any("sending the rest one by one" in m for m in caplog.messages), caplog.messages
        ids = [json.loads(m)["headers"]["id"] for m in r.lrange(listed, 0, -1)]
        assert set(ids) == {f"cut.{i}" for i in range(n)}
        assert len(ids) - n <= SEND_BATCH  # at most the one batch whose fate was unknown
        app.close()
        r.close()
    finally:
        server.persist = False
        server.stop()


def test_lost_worker_machine_batch_is_sent_again_whole(tmp_marker: Callable[[str], str]) -> None:
    """A worker machine dies in the middle of a batch message: the subtask it was running and
    the ones of that batch it had not started yet are sent again, one message each."""
    s, o = _two_single_slot_workers("lostbatch")
    try:
        markers = [tmp_marker(f"batch{i}") for i in range(4)]
        tasks = [Task("work", {"seconds": 1.5, "marker": m}) for m in markers]
        run = o.spawn(tasks, batch_size=2, deadline_s=60, preflight="off")
        victim = _lose_worker2_once_both_run(s, o, run)  # each runs the first of its batch
        batches = json.loads(o.store.record(run.id)["batches"])
        assert sorted(map(sorted, batches)) == [[0, 1], [2, 3]]
        [lost_batch] = [b for b in batches if victim in b]
        never_started = [i for i in lost_batch if i != victim]
        res = run.wait(timeout_s=60)
        assert res.status is RunStatus.SUCCEEDED, res.error
        for i in lost_batch:
            env = res.results[i]
            assert env.status is AgentStatus.OK
            assert env.worker is not None and env.worker.startswith("worker1@")
            assert Path(markers[i]).exists()
        assert res.results[victim].attempt == 2
        assert [res.results[i].attempt for i in never_started] == [1]
        resent = o.store.r.hgetall(o.store.keys.resent(run.id))
        assert sorted(resent) == sorted(map(str, lost_batch))
        assert all(w.startswith("worker2@") for w in resent.values())
    finally:
        o.close()
        s.stop()
