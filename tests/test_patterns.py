"""The three patterns end to end on a real server and real worker processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from orchestrator import (
    AgentStatus,
    EmbeddedStack,
    Orchestrator,
    Pattern,
    RunStatus,
    Settings,
    Task,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_spawn_collects_every_output_in_task_order(target_orch: Orchestrator) -> None:
    texts = [f"t{i}" for i in range(6)]
    res = target_orch.spawn([Task("echo", {"text": t}) for t in texts]).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.pattern is Pattern.SPAWN
    assert [r.output["text"] for r in res.results] == texts
    for env in res.results:
        assert env.status is AgentStatus.OK
        assert env.attempt == 1
        assert env.worker and "@" in env.worker
        assert env.queued_at is not None and env.started_at is not None
        assert env.finished_at is not None
        assert env.queued_at <= env.started_at <= env.finished_at
    assert res.report.n == 6
    assert res.report.wall_s > 0


def test_gather_merges_typed_outputs(target_orch: Orchestrator) -> None:
    run = target_orch.gather([Task("echo", {"text": t}) for t in "abcd"], merge="join")
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.merged == {"texts": ["a", "b", "c", "d"]}
    assert res.report.merge_s > 0


def test_race_first_valid_wins(target_orch: Orchestrator) -> None:
    tasks = [
        Task("echo", {"text": "bad-fast"}),
        Task("echo", {"text": "good-slow", "spin_s": 0.3}),
    ]
    res = target_orch.race(tasks, validate="starts_good").wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.winner is not None and res.winner.index == 1
    assert res.winner.output["text"] == "good-slow"
    # The first finisher was rejected by the validator, not silently dropped.
    assert res.results[0].status is AgentStatus.INVALID
    assert res.results[0].error is not None and "starts_good" in res.results[0].error.message


def test_spawn_with_a_failure_reports_it_and_keeps_the_rest(orch: Orchestrator) -> None:
    tasks = [
        Task("echo", {"text": "ok1"}),
        Task("echo", {"text": "boom", "fail": True}),
        Task("echo", {"text": "ok2"}),
    ]
    res = orch.spawn(tasks).wait(timeout_s=60)
    assert res.status is RunStatus.FAILED
    assert [r.status for r in res.results] == [AgentStatus.OK, AgentStatus.ERROR, AgentStatus.OK]
    err = res.results[1].error
    assert err is not None and err.type == "ValueError" and "asked to fail: boom" in err.message
    assert res.error is not None and "#1 echo error" in res.error
    assert res.outputs() == [
        {"text": "ok1", "pid": res.results[0].output["pid"]},
        {"text": "ok2", "pid": res.results[2].output["pid"]},
    ]


def test_invalid_output_is_trapped_not_raised(orch: Orchestrator) -> None:
    res = orch.spawn([Task("echo", {"text": "x", "invalid_output": True})]).wait(timeout_s=60)
    env = res.results[0]
    assert env.status is AgentStatus.INVALID
    assert env.error is not None and env.error.type == "InvalidOutput"
    assert "text" in env.error.message  # names the missing field


def test_validation_error_inside_the_agent_is_an_error_not_invalid_output(
    orch: Orchestrator,
) -> None:
    res = orch.spawn([Task("echo", {"text": "x", "inner_validation_error": True})]).wait(
        timeout_s=60
    )
    env = res.results[0]
    assert env.status is AgentStatus.ERROR
    assert env.error is not None and env.error.type == "ValidationError"
    # Named by field, never quoting the input (which may be a secret).
    assert "input_value" not in env.error.message and "text" in env.error.message


def test_gather_with_one_failure_still_merges_when_quorum_met(orch: Orchestrator) -> None:
    tasks = [
        Task("echo", {"text": "a"}),
        Task("echo", {"text": "b", "fail": True}),
        Task("echo", {"text": "c"}),
        Task("echo", {"text": "d"}),
    ]
    res = orch.gather(tasks, merge="join", quorum=3).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.merged == {"texts": ["a", "c", "d"]}
    assert res.results[1].status is AgentStatus.ERROR
    assert res.error is not None and "left out" in res.error


def test_gather_below_quorum_fails_naming_each_failure(orch: Orchestrator) -> None:
    tasks = [
        Task("echo", {"text": "a"}),
        Task("echo", {"text": "b", "fail": True}),
        Task("echo", {"text": "c", "invalid_output": True}),
    ]
    res = orch.gather(tasks, merge="join", quorum=2).wait(timeout_s=60)
    assert res.status is RunStatus.FAILED
    assert res.merged is None
    assert res.error is not None
    assert "quorum not met: 1 of 3" in res.error
    assert "#1 echo error" in res.error and "asked to fail: b" in res.error
    assert "#2 echo invalid" in res.error


def test_gather_defaults_to_needing_every_member(orch: Orchestrator) -> None:
    tasks = [Task("echo", {"text": "a"}), Task("echo", {"text": "b", "fail": True})]
    res = orch.gather(tasks, merge="join").wait(timeout_s=60)
    assert res.status is RunStatus.FAILED
    assert res.error is not None and "2 needed" in res.error


def test_all_failed_race_fails_listing_every_reason(orch: Orchestrator) -> None:
    tasks = [
        Task("echo", {"text": "r0", "fail": True}),
        Task("echo", {"text": "bad-r1"}),
        Task("echo", {"text": "r2", "invalid_output": True}),
    ]
    res = orch.race(tasks, validate="starts_good").wait(timeout_s=60)
    assert res.status is RunStatus.FAILED
    assert res.winner is None
    assert res.error is not None
    assert "asked to fail: r0" in res.error
    assert "validator 'starts_good' rejected" in res.error
    assert "#2 echo invalid" in res.error


@pytest.mark.parametrize("mode", ["cpu", "sleep", "socket"])
def test_running_loser_is_stopped_and_never_completes(
    orch: Orchestrator, tmp_marker: Callable[[str], str], mode: str
) -> None:
    marker = tmp_marker(f"loser-{mode}")
    tasks = [
        Task("work", {"seconds": 30, "marker": marker, "mode": mode}),  # never checks ctx
        Task("echo", {"text": "good", "spin_s": 0.5}),
    ]
    run = orch.race(tasks, validate="starts_good", deadline_s=60)
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.winner is not None and res.winner.index == 1
    loser = wait_for(lambda: orch.store.envelope(run.id, 0), 15, "the loser's envelope")
    assert loser.status is AgentStatus.CANCELLED, loser  # type: ignore[attr-defined]
    assert loser.ran_s < 10  # type: ignore[attr-defined]
    # The loser's function was interrupted, so the side effect of finishing can never appear.
    assert not Path(marker).exists()
    report = run.report()
    assert report.work_wasted_s >= loser.ran_s  # type: ignore[attr-defined]
    assert report.cancel_latency_max_s is not None and report.cancel_latency_max_s < 5


@pytest.mark.parametrize("pattern", ["spawn", "gather"])
def test_batched_subagents_keep_their_own_envelopes(orch: Orchestrator, pattern: str) -> None:
    tasks = [Task("echo", {"text": f"b{i}", "fail": i == 3}) for i in range(10)]
    if pattern == "spawn":
        run = orch.spawn(tasks, batch_size=4)
    else:
        run = orch.gather(tasks, merge="join", quorum=9, batch_size=4)
    res = run.wait(timeout_s=60)
    assert [r.index for r in res.results] == list(range(10))
    assert [r.status for r in res.results] == [
        AgentStatus.ERROR if i == 3 else AgentStatus.OK for i in range(10)
    ]
    assert {r.task_id for r in res.results} == {f"{run.id}.{i}" for i in range(10)}
    assert res.results[3].error is not None and "asked to fail: b3" in res.results[3].error.message
    if pattern == "gather":
        assert res.status is RunStatus.SUCCEEDED, res.error
        assert res.merged == {"texts": [f"b{i}" for i in range(10) if i != 3]}
    else:
        assert res.status is RunStatus.FAILED


def test_batched_subagents_skip_once_cancelled(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    marker = tmp_marker("batch")
    tasks = [
        Task("work", {"seconds": 30, "marker": f"{marker}-{i}", "mode": "sleep"}) for i in range(6)
    ]
    run = orch.spawn(tasks, batch_size=3, deadline_s=60)
    wait_for(lambda: run.status().started >= 2, 15, "the first item of each batch to start")
    res = run.cancel()
    assert res.status is RunStatus.CANCELLED
    envs = wait_for(
        lambda: len(orch.store.envelopes(run.id)) == 6 and orch.store.envelopes(run.id),
        20,
        "every item to report",
    )
    statuses = sorted(e.status.value for e in envs.values())  # type: ignore[attr-defined]
    assert statuses == ["cancelled"] * 2 + ["skipped"] * 4
    assert not any(Path(f"{marker}-{i}").exists() for i in range(6))


def test_narrow_runs_can_skip_the_coordinator_hop(stack: EmbeddedStack) -> None:
    """ORCH_CLIENT_EXPAND_MAX_N: runs that narrow are expanded by the client itself.

    Nobody consumes this client's coordinator queue, so only a run the client expanded can end.
    """
    queue = f"nobody-{uuid.uuid4().hex[:8]}"
    o = Orchestrator(
        Settings(
            broker_url=stack.url,
            key_prefix=stack.key_prefix,
            coordinator_queue=queue,
            client_expand_max_n=3,
        )
    )
    try:
        for pattern in ("spawn", "gather", "race"):
            tasks = [Task("echo", {"text": f"good-{i}"}) for i in range(3)]
            if pattern == "spawn":
                run = o.spawn(tasks)
            elif pattern == "gather":
                run = o.gather(tasks, merge="join")
            else:
                run = o.race(tasks, validate="starts_good")
            res = run.wait(timeout_s=30)
            assert res.status is RunStatus.SUCCEEDED, (pattern, res.error)
            assert "expanded_at" in o.store.record(run.id)
        assert o.store.r.llen(o.store.keys.queue(queue)) == 0
        wide = o.spawn([Task("echo", {"text": str(i)}) for i in range(4)])
        assert (
            o.store.r.llen(o.store.keys.queue(queue)) == 1
        )  # wider than 3: handed to a coordinator
        assert wide.result() is None and "expanded_at" not in o.store.record(wide.id)
    finally:
        o.store.r.delete(o.store.keys.queue(queue))
        o.close()


def test_settle_waits_for_the_losers_own_envelopes(orch: Orchestrator) -> None:
    tasks = [
        Task("echo", {"text": "good-fast", "spin_s": 0.4}),  # the others start meanwhile
        Task("echo", {"text": "good-slow", "spin_s": 5.0}),
        Task("echo", {"text": "good-slower", "spin_s": 6.0}),
    ]
    run = orch.race(tasks, validate="starts_good", preflight="off")
    res = run.wait(timeout_s=60)
    assert res.winner is not None and res.winner.index == 0
    settled = run.settle(timeout_s=15)
    assert [r.index for r in settled.results] == [0, 1, 2]
    stopped = [r for r in settled.results[1:] if r.started_at is not None]
    assert stopped, "no loser had started: nothing to settle"
    for loser in settled.results[1:]:
        # Its own envelope, not the stand-in a run ended before it reported gets.
        assert loser.error is None or loser.error.type != "NotReported"
        if loser in stopped:
            assert loser.status is AgentStatus.CANCELLED
            assert loser.cancel_latency_s is not None and loser.cancel_latency_s < 5.0
            assert loser.ran_s > 0
        else:  # never started (the slots were busy): skipped, which no one has to wait for
            assert loser.status is AgentStatus.SKIPPED
    assert settled.report.work_wasted_s == pytest.approx(
        sum(r.ran_s for r in settled.results[1:]), rel=1e-9
    )
    assert settled.winner == res.winner
