"""Pre-flight and ROI on a real server with real workers (2 processes x 2 slots).

The ``nap`` agent sleeps, so four slots really run four naps at once even on two CPU cores;
``tiny`` answers at once, so spawning it never pays. A module fixture runs each once first so
the advisor has measured history, exactly as a user's first runs would give it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import (
    AgentStatus,
    CheckStatus,
    EmbeddedStack,
    Execution,
    Orchestrator,
    ParallelismDoesNotPay,
    Pattern,
    RunStatus,
    Task,
    Verdict,
)
from orchestrator.cli import main
from tests.conftest import queued, recorded_runs, wait_for
from workers.models import AgentKind, AgentResult
from workers.store import make_store

pytestmark = pytest.mark.integration

NAP_S = 0.3
#: Measured speedup and wall time must be within this fraction of the prediction.
TOLERANCE = 0.25


def naps(n: int, first_tag: int = 0) -> list[Task]:
    return [Task("nap", {"seconds": NAP_S, "tag": first_tag + i}) for i in range(n)]


def tinies(*texts: str) -> list[Task]:
    return [Task("tiny", {"text": t}) for t in texts]


def idle_agents(orch: Orchestrator) -> None:
    """Earlier tests may have left work queued; predictions assume free slots."""
    entries = [orch.catalog.get(AgentKind.AGENT, a) for a in ("nap", "tiny")]
    queues = [orch.store.keys.queue(e.queue) for e in entries]
    wait_for(
        lambda: all(orch.store.r.llen(q) == 0 for q in queues),
        30,
        "the queues of nap and tiny to drain",
    )


@pytest.fixture(scope="module")
def warm(orch: Orchestrator) -> Orchestrator:
    """One run of each shape, so every agent, merger and validator used below has history."""
    idle_agents(orch)
    # Twice: a fresh worker process's first task also pays for connecting to Redis.
    assert orch.spawn(naps(4, first_tag=1000)).wait(timeout_s=30).ok
    assert orch.spawn(naps(4, first_tag=1100)).wait(timeout_s=30).ok
    assert orch.gather(tinies("w1", "w2", "w3"), merge="join_said").wait(timeout_s=30).ok
    # A racer the validator rejects: the validator is timed and tiny's valid share drops.
    lost = orch.race(tinies("bad"), validate="said_good").wait(timeout_s=30)
    assert lost.status is RunStatus.FAILED and lost.results[0].status is AgentStatus.INVALID
    return orch


# -- statistics -------------------------------------------------------------------------------
def test_every_finished_subagent_updates_its_statistics(warm: Orchestrator) -> None:
    names = ["agent:nap", "agent:tiny", "merger:join_said", "validator:said_good"]
    names.append("pattern:parallel-spawn")
    snap, _, _ = warm.store.planning_facts(names, [])
    nap = snap.agents["nap"]
    assert nap.count >= 4 and nap.ok_rate == 1.0
    # A fresh worker process's first task also pays for its Redis connection.
    assert NAP_S <= nap.run.p50_s < NAP_S + 0.1 and nap.run.p90_s >= nap.run.p50_s
    assert 0 <= nap.wait.p10_s <= nap.wait.p50_s <= nap.wait.p90_s < 5
    assert snap.agents["tiny"].run.mean_s < 0.05
    assert snap.agents["tiny"].ok_rate < 1.0  # the "bad" racer was rejected
    assert snap.mergers["join_said"].took.samples >= 1
    assert snap.validators["said_good"].took.p50_s < 0.05
    assert snap.patterns["parallel-spawn"].overhead.p50_s < 5
    for name in names:
        assert 0 < warm.store.r.ttl(warm.store.keys.stats(name)) <= warm.store.stats_ttl_s


def test_statistics_stay_bounded(orch: Orchestrator) -> None:
    """The finish script keeps only the newest samples and counts all of them."""
    store = make_store(orch.settings.model_copy(), orch.store.r)
    store.stats_samples, store.stats_ttl_s = 3, 60
    agent = f"capped-{uuid.uuid4().hex[:6]}"
    run_id = uuid.uuid4().hex[:12]
    now = time.time()
    record = {"run_id": run_id, "n": 5, "created_at": now, "deadline_at": now + 60}
    store.create_run({**record, "agents": [agent] * 5})
    for i in range(5):
        env = AgentResult(
            index=i,
            task_id=f"{run_id}.{i}",
            agent=agent,
            status=AgentStatus.OK,
            queued_at=100.0,
            started_at=100.0 + i,
            finished_at=100.5 + i,
        )
        assert store.finish_task(run_id, env, claim=False).new
    assert store.finish_task(run_id, env, claim=False).new is False  # a redelivery adds nothing
    key = store.keys.stats(f"agent:{agent}")
    assert store.r.lrange(key, 0, -1) == [
        "0.500000 4.000000 o",
        "0.500000 3.000000 o",
        "0.500000 2.000000 o",
    ]
    assert store.r.hget(store.keys.stats_counts, key) == "5"
    assert 0 < store.r.ttl(key) <= 60
    store.r.delete(*store.keys.run_keys(run_id))
    store.r.zrem(store.keys.runs, run_id)
    store.r.zrem(store.keys.deadlines, run_id)


# -- the verdicts, measured -------------------------------------------------------------------
def test_wide_plan_pays_and_its_speedup_matches_the_prediction(warm: Orchestrator) -> None:
    idle_agents(warm)
    pf = warm.preflight("parallel-spawn", naps(8, first_tag=2000))
    assert pf.verdict is Verdict.PAYS, pf.reasons()
    assert pf.slots == {"agents.nap": 4} and pf.waves == 2
    assert pf.speedup is not None and pf.parallel_s is not None
    res = warm.spawn(naps(8, first_tag=2000)).wait(timeout_s=30)
    assert res.ok, res.error
    actual = res.report
    assert actual.prediction is not None and actual.prediction.verdict is Verdict.PAYS
    assert actual.prediction.speedup == pytest.approx(pf.speedup, rel=0.05)
    # Sleeping naps scale with the slots, not the cores: about x3.8 on 4 slots in 2 waves.
    assert actual.speedup > 2.5
    print(f"predicted x{pf.speedup:.2f} in {pf.parallel_s:.3f}s", end=", ")
    print(f"measured x{actual.speedup:.2f} in {actual.wall_s:.3f}s")
    assert abs(actual.speedup - pf.speedup) / pf.speedup < TOLERANCE, (actual, pf)
    assert abs(actual.wall_s - pf.parallel_s) / pf.parallel_s < TOLERANCE, (actual, pf)


def test_tiny_plan_does_not_pay(warm: Orchestrator) -> None:
    pf = warm.preflight("parallel-spawn", tinies(*[f"t{i}" for i in range(8)]))
    assert pf.verdict is Verdict.DOES_NOT_PAY
    [cost] = [c for c in pf.checks if c.name == "cost"]
    assert cost.status is CheckStatus.FAIL and "too small to beat the spawn overhead" in cost.reason


def test_bad_plans_are_flagged_before_anythingrecorded_runs(
    warm: Orchestrator, idle_orch: Orchestrator
) -> None:
    runs = recorded_runs(idle_orch)
    dup = idle_orch.preflight("parallel-spawn", [*naps(3), *naps(1)])
    assert {c.name: c.status for c in dup.checks}["independence"] is CheckStatus.FAIL
    assert dup.verdict is Verdict.DOES_NOT_PAY
    merge = idle_orch.preflight("gather-then-merge", tinies("a", "b"), merge="needs_score")
    [structure] = [c for c in merge.checks if c.name == "structure"]
    assert structure.status is CheckStatus.FAIL and "score" in structure.reason
    race = idle_orch.preflight("race-then-cancel", naps(2))
    [check] = [c for c in race.checks if c.name == "race"]
    assert check.status is CheckStatus.WARN and "no validator" in check.reason
    assert queued(idle_orch) == 0 and recorded_runs(idle_orch) == runs


def test_refuse_raises_and_enqueues_nothing(warm: Orchestrator, idle_orch: Orchestrator) -> None:
    runs = recorded_runs(idle_orch)
    with pytest.raises(ParallelismDoesNotPay) as info:
        idle_orch.spawn(tinies("a", "b", "c", "d"), preflight="refuse")
    assert "too small to beat the spawn overhead" in str(info.value)
    assert "preflight='warn'" in str(info.value)
    assert info.value.preflight.verdict is Verdict.DOES_NOT_PAY  # type: ignore[attr-defined]
    with pytest.raises(ParallelismDoesNotPay, match="duplicated inputs"):
        idle_orch.spawn([*naps(2), *naps(1)], preflight="refuse")
    assert queued(idle_orch) == 0 and recorded_runs(idle_orch) == runs
    # A plan that pays is not refused: the counts above could have moved.
    idle_orch.spawn(naps(4, first_tag=3000), preflight="refuse")
    assert queued(idle_orch) == 1 and recorded_runs(idle_orch) == runs + 1


def test_warn_logs_and_records_the_verdict(
    warm: Orchestrator, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="orchestrator.preflight"):
        run = warm.spawn(tinies("x", "y"))  # preflight="warn" is the default
    assert any(
        "does-not-pay" in r.getMessage() and run.id in r.getMessage() for r in caplog.records
    )
    rec = warm.store.record(run.id)
    assert json.loads(rec["prediction"])["verdict"] == "does-not-pay"
    assert rec["execution"] == "parallel"
    events: list[tuple[str, dict[str, str]]]
    events = warm.store.r.xrange(warm.store.keys.events(run.id))  # type: ignore[assignment]
    [pre] = [fields for _, fields in events if fields["type"] == "preflight"]
    assert pre["verdict"] == "does-not-pay" and "cost fail" in pre["reasons"]
    res = run.wait(timeout_s=30)
    assert res.ok and res.report.execution is Execution.PARALLEL
    assert res.report.prediction is not None and res.report.prediction.policy == "warn"


def test_preflight_off_records_no_prediction(orch: Orchestrator) -> None:
    res = orch.spawn(tinies("off"), preflight="off").wait(timeout_s=30)
    assert res.ok and res.report.prediction is None
    assert "prediction" not in orch.store.record(res.run_id)


# -- auto: run it sequentially instead ---------------------------------------------------------
def test_auto_runs_a_spawn_that_does_not_pay_one_task_after_another(warm: Orchestrator) -> None:
    texts = [f"s{i}" for i in range(5)]
    res = warm.spawn(tinies(*texts), preflight="auto").wait(timeout_s=30)
    assert res.ok, res.error
    assert warm.store.record(res.run_id)["execution"] == "sequential"
    assert res.report.execution is Execution.SEQUENTIAL
    assert [r.output["text"] for r in res.results] == texts
    for before, after in zip(res.results, res.results[1:], strict=False):
        assert before.finished_at is not None and after.started_at is not None
        assert after.started_at >= before.finished_at  # never two at once


def test_auto_gather_still_merges(warm: Orchestrator) -> None:
    res = warm.gather(tinies("a", "b", "c"), merge="join_said", preflight="auto").wait(timeout_s=30)
    assert res.ok, res.error
    assert res.report.execution is Execution.SEQUENTIAL
    assert res.merged == {"texts": ["a", "b", "c"]}


def test_auto_race_first_valid_wins_and_the_rest_skip(warm: Orchestrator) -> None:
    tasks = tinies("bad", "good-1", "good-2", "good-3")
    res = warm.race(tasks, validate="said_good", preflight="auto").wait(timeout_s=30)
    assert res.ok, res.error
    assert res.report.execution is Execution.SEQUENTIAL
    assert res.winner is not None and res.winner.index == 1
    assert res.winner.output == {"text": "good-1"}
    assert [r.status for r in res.results] == [
        AgentStatus.INVALID,
        AgentStatus.OK,
        AgentStatus.SKIPPED,
        AgentStatus.SKIPPED,
    ]


def test_coordinator_applies_the_policy_for_other_clients(warm: Orchestrator) -> None:
    """A request sent straight to the coordinator (no record yet) gets the same pre-flight."""
    run_id = uuid.uuid4().hex[:16]
    req = warm.request(Pattern.SPAWN, [*naps(2), *naps(1)], preflight="refuse", run_id=run_id)
    warm.app.send_task(
        "orchestrator.run",
        args=[req.model_dump(mode="json", by_alias=True)],
        queue=warm.settings.coordinator_queue,
    )
    result = wait_for(lambda: warm.store.result(run_id), 15, "the refused run's result")
    assert result.status is RunStatus.FAILED  # type: ignore[attr-defined]
    assert "ParallelismDoesNotPay" in result.error  # type: ignore[attr-defined]
    assert warm.store.r.hlen(warm.store.keys.attempts(run_id)) == 0  # nothing ran


# -- the CLI ----------------------------------------------------------------------------------
def test_cli_preflight_and_report(
    warm: Orchestrator, stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", stack.url)
    monkeypatch.setenv("ORCH_KEY_PREFIX", stack.key_prefix)
    runner = CliRunner()
    plan = {"pattern": "parallel-spawn", "tasks": [t.spec().model_dump() for t in naps(8)]}
    out = runner.invoke(main, ["preflight"], input=json.dumps(plan))
    assert out.exit_code == 0, out.output
    assert "-> PAYS" in out.output and "WARN  width" in out.output
    tiny = {"pattern": "parallel-spawn", "tasks": [t.spec().model_dump() for t in tinies("a", "b")]}
    out = runner.invoke(main, ["preflight", "--json"], input=json.dumps(tiny))
    assert out.exit_code == 3 and json.loads(out.output)["verdict"] == "does-not-pay"

    run = warm.race(tinies("bad", "good"), validate="said_good")
    run.wait(timeout_s=30)
    # The report draws every envelope that has arrived: let the loser's arrive first.
    res = run.settle(timeout_s=15)
    svg = tmp_path / "race.svg"
    out = runner.invoke(main, ["report", res.run_id, "--svg", str(svg), "--no-color"])
    assert out.exit_code == 0, out.output
    assert "predicted" in out.output and "pre-flight verdict" in out.output
    assert "\x1b[" not in out.output
    rows = [line for line in out.output.splitlines() if line.startswith("#")]
    assert len(rows) == 2
    assert [("★" in row, "ok (won)" in row) for row in rows] == [(False, False), (True, True)]
    root = ET.fromstring(svg.read_text())
    ran = [r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.get("class") == "ran"]
    assert len(ran) == sum(1 for r in res.results if r.started_at is not None) >= 1
    assert f"timeline written to {svg}" in out.output


def test_adaptive_batching_packs_tiny_subagents(orch: Orchestrator, stack: EmbeddedStack) -> None:
    """Measured tiny durations make pre-flight pack subagents per message; results unchanged."""
    # An agent no other test uses, so its measured durations are its own.
    warm = orch.spawn([Task("blink", {"text": f"warm{i}"}) for i in range(8)], preflight="off")
    assert warm.wait(timeout_s=60).ok
    tasks = [Task("blink", {"text": f"tiny{i}"}) for i in range(200)]
    pf = orch.preflight("parallel-spawn", tasks)
    assert pf.batch_size is not None and pf.batch_size >= 2
    assert any(c.name == "batching" and "packed" in c.reason for c in pf.checks)
    run = orch.spawn(tasks)
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert [r.output["text"] for r in res.results] == [f"tiny{i}" for i in range(200)]
    record = orch.store.record(run.id)
    assert int(record["batching"]) >= 2
    # Several subagents really shared a message: the workers received batch messages.
    size = int(record["batching"])
    batches = -(-200 // size)
    logs = stack.log("worker1") + stack.log("worker2")
    received = [b for b in range(batches) if f"batch.blink[{run.id}.b{b}] received" in logs]
    assert received == list(range(batches))
    assert f"agents.blink[{run.id}.0]" not in logs
    assert {r.task_id for r in res.results} == {f"{run.id}.{i}" for i in range(200)}
    explicit = orch.spawn(tasks[:10], batch_size=1)
    assert explicit.wait(timeout_s=60).ok
    assert orch.store.record(explicit.id)["batching"] == ""
