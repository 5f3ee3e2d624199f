"""Where a run's envelopes live once it ends, and the report built without reading them.

A run whose every subtask reported is ended from aggregates that finish.lua keeps on the run
record: its stored result names the results hash instead of copying every envelope. These tests
check that such a result reads back identical to one built from the envelopes, and that runs
ended with subtasks missing still carry their own snapshot.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from orchestrator import AgentStatus, Orchestrator, RunStatus, RunTimedOut, Task
from orchestrator.aio import store_of
from orchestrator.api.live_envelopes import (
    COALESCE_S,
    LIVE_MIN_N,
    AsyncLiveEnvelopes,
    LiveEnvelopes,
)
from tests.conftest import wait_for
from workers.models import RunResult
from workers.run_result import build_result, roi

pytestmark = pytest.mark.integration


def _stored(orch: Orchestrator, run_id: str) -> dict[str, object]:
    raw = orch.store.r.get(orch.store.keys.result(run_id))
    assert raw is not None
    doc: dict[str, object] = json.loads(raw)
    return doc


def test_all_ok_spawn_leaves_envelopes_in_the_hash_and_reads_back_whole(
    orch: Orchestrator,
) -> None:
    n = 40
    run = orch.spawn([Task("echo", {"text": f"t{i}"}) for i in range(n)], preflight="off")
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert [r.output["text"] for r in res.results] == [f"t{i}" for i in range(n)]
    assert [r.index for r in res.results] == list(range(n))

    doc = _stored(orch, run.id)
    assert doc["results"] == [] and doc["results_key"] == orch.store.keys.results(run.id)
    assert orch.store.record(run.id)["results_in"] == "hash"

    # The report from the aggregates equals the one computed from the envelopes themselves.
    expected = roi(res.results, created_at=res.created_at, finished_at=res.finished_at)
    got = res.report
    assert got.n == expected.n == n
    for field in ("sequential_estimate_s", "work_spent_s", "queue_wait_s", "wall_s"):
        assert getattr(got, field) == pytest.approx(getattr(expected, field), rel=1e-9, abs=1e-9)
    assert got.coordinator_overhead_s == pytest.approx(expected.coordinator_overhead_s, abs=1e-6)
    assert got.work_wasted_s == expected.work_wasted_s == 0.0
    assert got.cancel_latency_p50_s is None

    # The same result every time, sync and async, and equal to a fully inline build.
    again = run.wait(timeout_s=5)
    assert again == res
    assert asyncio.run(run.wait_async(timeout_s=5)) == res
    rec = orch.store.record(run.id)
    inline = build_result(
        rec, res.results, status=res.status, finished_at=res.finished_at, report=res.report
    )
    assert RunResult.model_validate_json(inline.model_dump_json()) == res


def test_progress_counts_come_from_the_record(orch: Orchestrator) -> None:
    tasks = [Task("echo", {"text": "a"}), Task("echo", {"text": "b", "fail": True})]
    run = orch.spawn(tasks, preflight="off")
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.FAILED
    progress = run.status()
    assert progress.finished == 2
    assert progress.counts == {"ok": 1, "error": 1}


def test_failed_spawn_with_every_envelope_also_reads_back_from_the_hash(
    orch: Orchestrator,
) -> None:
    tasks = [Task("echo", {"text": "ok"}), Task("echo", {"text": "boom", "fail": True})]
    run = orch.spawn(tasks, preflight="off")
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.FAILED
    assert res.error is not None and "1 of 2 subagents failed" in res.error
    assert "asked to fail: boom" in res.error
    assert [r.status for r in res.results] == [AgentStatus.OK, AgentStatus.ERROR]
    assert _stored(orch, run.id)["results_key"] is not None


def test_race_result_reads_back_the_same_after_the_loser_stopped(orch: Orchestrator) -> None:
    tasks = [
        Task("echo", {"text": "good-fast"}),
        Task("echo", {"text": "good-slow", "spin_s": 5.0}),
    ]
    run = orch.race(tasks, validate="starts_good", preflight="off")
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED and res.winner is not None
    assert res.winner.index == 0 and len(res.results) == 2
    key = orch.store.keys.results(run.id)
    wait_for(lambda: orch.store.r.hlen(key) == 2, 15, "the stopped loser's envelope")
    assert run.wait(timeout_s=5) == res


def test_run_ended_with_subtasks_missing_keeps_its_own_snapshot(idle_orch: Orchestrator) -> None:
    # Nobody expands this run: cancelling it ends it with every subtask missing.
    run = idle_orch.spawn([Task("echo", {"text": t}) for t in "abc"], preflight="off")
    run.cancel("test: end it before anything ran")
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.CANCELLED
    assert [r.status for r in res.results] == [AgentStatus.SKIPPED] * 3
    doc = _stored(idle_orch, run.id)
    assert doc.get("results_key") is None
    assert isinstance(doc["results"], list) and len(doc["results"]) == 3
    assert run.wait(timeout_s=5) == res


def test_a_wide_run_is_read_while_it_runs_and_ends_identical(orch: Orchestrator) -> None:
    n = LIVE_MIN_N + 40
    tasks = [Task("echo", {"text": f"w{i}", "spin_s": 0.004}) for i in range(n)]
    run = orch.spawn(tasks, preflight="off")
    feed = LiveEnvelopes(orch.store, run.id, n)
    limit = time.monotonic() + 60
    while not feed.wait(1.0):
        assert time.monotonic() < limit, "the run did not end in 60 s"
    # Envelopes arrived while the run went on; the end fetched only the rest.
    assert 0 < len(feed.have) <= n
    assert all(env.index == i for i, env in feed.have.items())
    fed = orch.store.result(run.id, feed.have, n)
    whole = orch.store.result(run.id)
    assert fed is not None and whole is not None
    assert fed == whole
    assert [r.output["text"] for r in whole.results] == [f"w{i}" for i in range(n)]
    assert run.wait(timeout_s=5) == whole


def test_a_wide_run_awaited_is_read_while_it_runs_too(orch: Orchestrator) -> None:
    n = LIVE_MIN_N + 40
    tasks = [Task("echo", {"text": f"a{i}", "spin_s": 0.004}) for i in range(n)]
    run = orch.spawn(tasks, preflight="off")

    async def follow() -> tuple[int, RunResult]:
        mux = store_of(orch).mux
        feed = AsyncLiveEnvelopes(store_of(orch), run.id, n)
        sub = await mux.subscribe(orch.store.keys.done(run.id))
        limit = time.monotonic() + 60
        try:
            while await mux.next_entries(sub, COALESCE_S) is None:
                assert time.monotonic() < limit, "the run did not end in 60 s"
                await feed.read()
        finally:
            mux.unsubscribe(sub)
        early = len(feed.have)
        assert all(env.index == i for i, env in feed.have.items())
        return early, await run.wait_async(timeout_s=10)

    early, awaited = asyncio.run(follow())
    assert 0 < early <= n
    assert awaited == run.wait(timeout_s=5)
    assert [r.output["text"] for r in awaited.results] == [f"a{i}" for i in range(n)]


def test_waiting_on_a_wide_run_times_out_then_resumes(orch: Orchestrator) -> None:
    n = LIVE_MIN_N + 10
    tasks = [Task("echo", {"text": f"t{i}", "spin_s": 0.02}) for i in range(n)]  # >= 1 s of work
    run = orch.spawn(tasks, preflight="off")
    started = time.monotonic()
    with pytest.raises(RunTimedOut) as info:
        run.wait(timeout_s=0.3)
    assert time.monotonic() - started < 5  # the feed's reads do not overrun the caller's limit
    assert "it goes on" in str(info.value)
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert [r.output["text"] for r in res.results] == [f"t{i}" for i in range(n)]
