"""Cancelling runs, deadlines and waiting, on real workers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import AgentStatus, Orchestrator, RunStatus, RunTimedOut, Task
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _long(marker: str, n: int, mode: str = "cpu") -> list[Task]:
    return [
        Task("work", {"seconds": 30, "marker": f"{marker}-{i}", "mode": mode}) for i in range(n)
    ]


@pytest.mark.parametrize("pattern", ["spawn", "gather", "race"])
def test_cancel_stops_every_pattern(
    orch: Orchestrator, tmp_marker: Callable[[str], str], pattern: str
) -> None:
    marker = tmp_marker(pattern)
    tasks = _long(marker, 6)  # more than the 4 worker slots: some stay queued
    if pattern == "spawn":
        run = orch.spawn(tasks, deadline_s=60)
    elif pattern == "gather":
        run = orch.gather(tasks, merge="collect_done", deadline_s=60)
    else:
        run = orch.race(tasks, deadline_s=60)
    wait_for(lambda: run.status().started >= 2, 15, "subtasks to start")
    res = run.cancel("test says stop")
    assert res.status is RunStatus.CANCELLED
    assert res.error == "test says stop"
    assert len(res.results) == 6
    assert {r.status for r in res.results} <= {AgentStatus.CANCELLED, AgentStatus.SKIPPED}
    # Every subtask reports in: running ones interrupted, queued ones skip when they start.
    envs = wait_for(
        lambda: len(orch.store.envelopes(run.id)) == 6 and orch.store.envelopes(run.id),
        20,
        "all six envelopes",
    )
    assert {e.status for e in envs.values()} <= {  # type: ignore[attr-defined]
        AgentStatus.CANCELLED,
        AgentStatus.SKIPPED,
    }
    assert not any(Path(f"{marker}-{i}").exists() for i in range(6))


def test_deadline_ends_the_run_timed_out_keeping_what_arrived(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    tasks = [Task("echo", {"text": "quick"}), *_long(tmp_marker("deadline"), 1, mode="sleep")]
    run = orch.spawn(tasks, deadline_s=1.5)
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.TIMED_OUT
    assert res.results[0].status is AgentStatus.OK  # what arrived is kept
    assert res.results[1].status is AgentStatus.CANCELLED
    assert res.error is not None and "deadline of 1.5s passed with 1 of 2" in res.error
    assert "unfinished: #1 work running on worker" in res.error
    assert res.results[1].worker is not None and res.results[1].worker.startswith("worker")
    assert res.finished_at - res.created_at < 10
    envelope = wait_for(lambda: orch.store.envelope(run.id, 1), 15, "the stopped sleeper")
    assert envelope.status is AgentStatus.CANCELLED  # type: ignore[attr-defined]


def test_wait_timeout_raises_and_the_run_goes_on(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    run = orch.spawn(_long(tmp_marker("waiting"), 1, mode="cooperative"), deadline_s=60)
    with pytest.raises(RunTimedOut, match="it goes on"):
        run.wait(timeout_s=0.3)
    assert run.status().status is RunStatus.RUNNING
    assert run.cancel().status is RunStatus.CANCELLED


def test_get_run_from_another_client_sees_the_same_result(orch: Orchestrator) -> None:
    run = orch.spawn([Task("echo", {"text": "shared"})])
    first = run.wait(timeout_s=30)
    other = Orchestrator(orch.settings)
    try:
        again = other.get_run(run.id).wait(timeout_s=5)
    finally:
        other.close()
    assert again == first
    assert orch.get_run(run.id).status().status is RunStatus.SUCCEEDED
    assert run.id in orch.recent_runs(50)
