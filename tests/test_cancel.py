"""Cancellation that really stops losers, fast, and never hits the wrong task (real workers)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from orchestrator import AgentStatus, EmbeddedStack, Orchestrator, RunStatus, Task
from tests.conftest import _stack, wait_for

pytestmark = pytest.mark.integration


def _client(s: EmbeddedStack) -> Orchestrator:
    return Orchestrator(broker_url=s.url, key_prefix=s.key_prefix)


@pytest.fixture(scope="module")
def threads_orch() -> Iterator[Orchestrator]:
    """A worker running the threads pool (Celery's revoke(terminate=True) refuses it)."""
    s = _stack(name="threads", workers=1, concurrency=4, pool="threads")
    o = _client(s)
    try:
        yield o
    finally:
        o.close()
        s.stop()


def _race_with_loser(o: Orchestrator, marker: str, mode: str, seconds: float = 30) -> str:
    run = o.race(
        [
            Task("work", {"seconds": seconds, "marker": marker, "mode": mode}),
            Task("echo", {"text": "good", "spin_s": 0.4}),
        ],
        validate="starts_good",
        deadline_s=60,
    )
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.winner is not None and res.winner.index == 1
    return run.id


@pytest.mark.parametrize("mode", ["cpu", "cooperative", "ctx_sleep"])
def test_threads_pool_loser_is_interrupted(
    threads_orch: Orchestrator, tmp_marker: Callable[[str], str], mode: str
) -> None:
    marker = tmp_marker(f"threads-{mode}")
    run_id = _race_with_loser(threads_orch, marker, mode)
    loser = wait_for(lambda: threads_orch.store.envelope(run_id, 0), 15, "loser's envelope")
    assert loser.status is AgentStatus.CANCELLED, loser  # type: ignore[attr-defined]
    assert loser.cancel_latency_s is not None and loser.cancel_latency_s < 2  # type: ignore[attr-defined]
    assert not Path(marker).exists()


def test_the_process_that_ran_a_loser_runs_the_next_task_unharmed(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    for round_ in range(3):
        marker = tmp_marker(f"unharmed-{round_}")
        run_id = _race_with_loser(orch, marker, "cpu")
        loser_pid = int(Path(marker + ".pid").read_text())
        wait_for(lambda rid=run_id: orch.store.envelope(rid, 0), 15, "loser's envelope")
        # Right away, many short tasks: each must complete; a stray interrupt would cancel one.
        res = orch.spawn([Task("echo", {"text": f"n{i}", "spin_s": 0.02}) for i in range(16)]).wait(
            timeout_s=60
        )
        assert res.status is RunStatus.SUCCEEDED, res.error
        assert all(r.status is AgentStatus.OK for r in res.results)
        pids = {r.output["pid"] for r in res.results}
        assert loser_pid in pids or len(pids) >= 3, "the loser's process took no follow-up task"
        assert not Path(marker).exists()


def test_task_stuck_in_c_is_killed_after_grace_and_the_pool_recovers(
    tmp_marker: Callable[[str], str],
) -> None:
    s = _stack(name="grace", workers=1, concurrency=2, extra_env={"ORCH_CANCEL__GRACE_S": "1"})
    o = _client(s)
    try:
        marker = tmp_marker("stuck")
        run_id = _race_with_loser(o, marker, "c_loop", seconds=60)
        loser = wait_for(lambda: o.store.envelope(run_id, 0), 20, "the stuck loser's envelope")
        assert loser.status is AgentStatus.CANCELLED  # type: ignore[attr-defined]
        assert "killed after grace period" in loser.error.message  # type: ignore[attr-defined]
        # The pool replaced the process; the redelivered message did not run the work again.
        res = o.spawn([Task("echo", {"text": f"after{i}"}) for i in range(4)]).wait(timeout_s=60)
        assert res.status is RunStatus.SUCCEEDED, res.error
        # The redelivered message is dropped (Celery still knows the revoke) or, on a worker
        # that missed the revoke, starts and skips (its envelope exists): never runs again.
        wait_for(
            lambda: (
                f"Discarding revoked task: agents.work[{run_id}.0]" in s.log("worker1")
                or o.store.r.hget(o.store.keys.attempts(run_id), "0") == "2"
            ),
            20,
            "the killed task's message to be redelivered and dropped or skipped",
        )
        assert o.store.envelope(run_id, 0) == loser
        assert not Path(marker).exists()
    finally:
        o.close()
        s.stop()


def test_batched_subtask_stuck_in_c_is_killed_after_grace_too(
    tmp_marker: Callable[[str], str],
) -> None:
    """In a batch message the grace kill targets the item running; the redelivered batch skips
    it (reported) and the rest (cancelled)."""
    s = _stack(name="gracebatch", workers=1, concurrency=2, extra_env={"ORCH_CANCEL__GRACE_S": "1"})
    o = _client(s)
    try:
        markers = [tmp_marker(f"stuckbatch{i}") for i in range(3)]
        tasks = [Task("work", {"seconds": 60, "marker": m, "mode": "c_loop"}) for m in markers]
        run = o.spawn(tasks, batch_size=3, deadline_s=120, preflight="off")
        wait_for(lambda: run.status().started >= 1, 20, "the batch's first item to start")
        assert run.cancel("test: stop the stuck batch").status is RunStatus.CANCELLED
        first = wait_for(lambda: o.store.envelope(run.id, 0), 20, "the stuck item's envelope")
        assert first.status is AgentStatus.CANCELLED  # type: ignore[attr-defined]
        assert "killed after grace period" in first.error.message  # type: ignore[attr-defined]
        settled = run.settle(timeout_s=20)
        assert [r.status for r in settled.results[1:]] == [AgentStatus.SKIPPED] * 2
        assert not any(Path(m).exists() for m in markers)  # no item ran to its end
        res = o.spawn([Task("echo", {"text": f"after{i}"}) for i in range(4)]).wait(timeout_s=60)
        assert res.status is RunStatus.SUCCEEDED, res.error  # the pool replaced the process
    finally:
        o.close()
        s.stop()


def test_cancel_sent_while_no_worker_is_online_still_skips_later(
    tmp_marker: Callable[[str], str],
) -> None:
    s = _stack(name="noworker", workers=1)
    o = _client(s)
    try:
        s.stop_process("worker1")  # its catalog stays; no worker is online any more
        wait_for(lambda: "worker1" not in s.online(), 15, "the worker to go offline")
        marker = tmp_marker("offline")
        tasks = [Task("work", {"seconds": 5, "marker": f"{marker}-{i}"}) for i in range(3)]
        run = o.spawn(tasks, deadline_s=120)
        wait_for(lambda: run.status().status is RunStatus.RUNNING, 15, "the run to be expanded")
        res = run.cancel("nobody was listening")
        assert res.status is RunStatus.CANCELLED
        assert {r.status for r in res.results} == {AgentStatus.SKIPPED}
        # Celery's revoke broadcast reached no one; our flag still stops the work later.
        s.start_worker("late")
        s.wait_ready(["late"], 30)
        wait_for(
            lambda: o.store.r.hlen(o.store.keys.attempts(run.id)) == 3,
            30,
            "the late worker to take all three messages",
        )
        assert {e.status for e in o.store.envelopes(run.id).values()} == {AgentStatus.SKIPPED}
        assert not any(Path(f"{marker}-{i}.pid").exists() for i in range(3))
    finally:
        o.close()
        s.stop()


def test_deadline_holds_when_the_coordinator_is_gone(tmp_marker: Callable[[str], str]) -> None:
    s = _stack(name="nocoord", workers=1, concurrency=2)
    o = _client(s)
    try:
        marker = tmp_marker("orphan")
        run = o.spawn(
            [Task("work", {"seconds": 60, "marker": marker, "mode": "sleep"})], deadline_s=2
        )
        wait_for(lambda: run.status().started == 1, 15, "the subtask to start")
        s.stop_process("coordinator", timeout_s=1)  # its deadline task dies with it
        res = run.wait(timeout_s=30)
        assert res.status is RunStatus.TIMED_OUT
        assert "deadline of 2.0s passed" in (res.error or "")
        env = wait_for(lambda: o.store.envelope(run.id, 0), 15, "the interrupted subtask")
        assert env.status is AgentStatus.CANCELLED  # type: ignore[attr-defined]
        assert not Path(marker).exists()
    finally:
        o.close()
        s.stop()


def test_cancel_of_one_subtask_by_index(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    marker = tmp_marker(f"one-{uuid.uuid4().hex[:4]}")
    run = orch.spawn(
        [
            Task("work", {"seconds": 30, "marker": marker, "mode": "sleep"}),
            Task("echo", {"text": "stays", "spin_s": 0.5}),
        ],
        deadline_s=60,
    )
    wait_for(lambda: run.status().started == 2, 15, "both to start")
    orch.store.request_cancel(run.id, "just this one", indices=[0])
    res = run.wait(timeout_s=30)
    assert res.results[0].status is AgentStatus.CANCELLED
    assert res.results[1].status is AgentStatus.OK
    assert res.status is RunStatus.FAILED  # a spawn with a cancelled member did not succeed


def test_cancel_revokes_the_batch_messages_of_a_batched_run(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    """A batched run's messages have their own ids (``<run>.b<n>``): a cancel revokes them too,
    so the ones still queued show REVOKED in Flower (before, only ``<run>.<i>`` ids were)."""
    marker = tmp_marker(f"batch-{uuid.uuid4().hex[:4]}")
    tasks = [
        Task("work", {"seconds": 30, "marker": f"{marker}{i}", "mode": "sleep"}) for i in range(6)
    ]
    run = orch.spawn(tasks, batch_size=2, deadline_s=60, preflight="off")
    wait_for(lambda: run.status().started >= 1, 15, "a batch to start")
    run.cancel("stop the batches")
    expected = {f"{run.id}.b{n}" for n in range(3)}

    def revoked() -> set[str]:
        replies = orch.app.control.inspect(timeout=1.0).revoked() or {}
        return {task_id for ids in replies.values() for task_id in ids} & expected

    wait_for(lambda: revoked() == expected, 15, "every batch message revoked on the workers")
