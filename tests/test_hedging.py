"""Hedged races on real workers: racer i starts only ``i * hedge_after_s`` after the run, and
only if no valid result arrived by then; a racer whose turn never comes is skipped without
calling its agent (no marker file, no request to the model server); ``hedge="p95"`` takes the
delay from the agent's measured run times. One worker process with two prefork slots, on a
stack of its own: its statistics start empty."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator

import pytest

from orchestrator import AgentStatus, EmbeddedStack, Orchestrator, Pattern, RunStatus, Task
from tests.conftest import AGENT_MODULES, ROOT, client_for, stack_for, wait_for
from tests.model_server import ModelServer
from workers.errors import InvalidRequest
from workers.stats import AGENT, series

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def hedge_stack() -> Iterator[EmbeddedStack]:
    yield from stack_for(
        name="hedge", workers=1, concurrency=2, agent_modules=[*AGENT_MODULES, "tests.agents_async"]
    )


@pytest.fixture(scope="module")
def o(hedge_stack: EmbeddedStack) -> Iterator[Orchestrator]:
    yield from client_for(hedge_stack)


def _work(marker: str, seconds: float) -> Task:
    return Task("work", {"seconds": seconds, "marker": marker, "mode": "sleep"})


def test_hedge_p95_without_history_is_refused_naming_the_agent(o: Orchestrator) -> None:
    tasks = [Task("echo", {"text": "good a"}), Task("echo", {"text": "good b"})]
    with pytest.raises(InvalidRequest, match=r"agent 'echo' has 0 measured runs.*hedge_after_s"):
        o.race(tasks, validate="starts_good", hedge="p95")
    # With a fallback it runs, hedged by the fallback.
    res = o.race(tasks, validate="starts_good", hedge="p95", hedge_after_s=7.0).wait(30)
    assert res.status is RunStatus.SUCCEEDED
    assert res.report.hedge_after_s == 7.0


def test_hedge_options_are_checked(o: Orchestrator) -> None:
    tasks = [Task("echo", {"text": "a"}), Task("echo", {"text": "b"})]
    with pytest.raises(InvalidRequest, match="greater than 0"):
        o.request(Pattern.RACE, tasks, hedge_after_s=0)
    with pytest.raises(InvalidRequest, match="hedge"):
        o.request(Pattern.RACE, tasks, hedge="p42")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="apply only to race-then-cancel"):
        o.request(Pattern.SPAWN, tasks, hedge_after_s=0.2)
    with pytest.raises(InvalidRequest, match="apply only to race-then-cancel"):
        o.request(Pattern.GATHER, tasks, merge="join", hedge="p95")


def test_a_fast_first_racer_means_the_second_never_starts(
    o: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    first, second = tmp_marker("first"), tmp_marker("second")
    run = o.race([_work(first, 0.05), _work(second, 0.05)], hedge_after_s=30.0, deadline_s=60)
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED and res.winner is not None
    assert res.winner.index == 0
    # The waiting racer wakes on the win (not after its 30 s) and records itself skipped.
    settled = run.settle(timeout_s=10)
    second_env = settled.results[1]
    assert second_env.status is AgentStatus.SKIPPED, second_env
    assert second_env.started_at is None
    assert os.path.exists(first)
    assert not os.path.exists(second) and not os.path.exists(second + ".pid")  # never ran
    assert o.store.reported_count(run.id) == 2
    report = settled.report
    assert (report.hedge_after_s, report.hedged_started, report.hedged_skipped) == (30.0, 1, 1)


def test_a_slow_first_racer_is_hedged_and_the_hedge_wins(
    o: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    slow, fast = tmp_marker("slow"), tmp_marker("fast")
    run = o.race([_work(slow, 30), _work(fast, 0.05)], hedge_after_s=0.5, deadline_s=60)
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED and res.winner is not None
    assert res.winner.index == 1
    # Not before its turn: half a second after the run was sent.
    assert res.winner.started_at is not None and res.winner.queued_at is not None
    assert res.winner.started_at >= res.winner.queued_at + 0.5
    settled = run.settle(timeout_s=15)
    loser = settled.results[0]
    assert loser.status is AgentStatus.CANCELLED, loser
    assert os.path.exists(slow + ".pid") and not os.path.exists(slow)  # started, stopped
    assert os.path.exists(fast)
    assert (settled.report.hedged_started, settled.report.hedged_skipped) == (2, 0)


def test_cancelling_a_hedged_race_skips_the_racer_waiting_its_turn(
    o: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    slow, later = tmp_marker("slow"), tmp_marker("later")
    run = o.race([_work(slow, 30), _work(later, 0.05)], hedge_after_s=40.0, deadline_s=60)
    wait_for(lambda: os.path.exists(slow + ".pid"), 15, "the first racer to start")
    run.cancel()
    wait_for(lambda: o.store.reported_count(run.id) == 2, 10, "both racers to report")
    res = run.refreshed()
    assert res.status is RunStatus.CANCELLED
    assert [r.status for r in res.results] == [AgentStatus.CANCELLED, AgentStatus.SKIPPED]
    assert not os.path.exists(later + ".pid")


def test_an_async_racer_skipped_by_the_hedge_never_calls_the_server(
    o: Orchestrator, model: ModelServer
) -> None:
    ids = [uuid.uuid4().hex, uuid.uuid4().hex]
    tasks = [
        Task(
            "async.stream",
            {"url": model.url, "stream_id": sid, "chunks": 2, "interval_ms": 10},
        )
        for sid in ids
    ]
    run = o.race(tasks, validate="async.has_chunks", hedge_after_s=30.0, deadline_s=60)
    res = run.wait(timeout_s=30)
    assert res.winner is not None and res.winner.index == 0
    settled = run.settle(timeout_s=10)
    assert settled.results[1].status is AgentStatus.SKIPPED
    assert model.record(ids[0]) is not None
    assert model.record(ids[1]) is None  # the hedge never sent its request


def test_hedge_p95_uses_the_agents_measured_p95(o: Orchestrator) -> None:
    # History: 24 measured runs of echo (more than ORCH_ADVISOR__HEDGE_MIN_SAMPLES).
    history = [Task("echo", {"text": f"h{i}", "spin_s": 0.002 * (i % 5)}) for i in range(24)]
    assert o.spawn(history, deadline_s=60).wait(timeout_s=60).status is RunStatus.SUCCEEDED
    stats, _, _ = o.store.planning_facts([series(AGENT, "echo")], [])
    measured = stats.agents["echo"].run
    assert measured.samples >= 20
    tasks = [Task("echo", {"text": "good x"}), Task("echo", {"text": "good y"})]
    res = o.race(tasks, validate="starts_good", hedge="p95", deadline_s=60).wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED
    assert res.report.hedge_after_s == pytest.approx(max(measured.p95_s, 0.001))
    record = o.store.record(res.run_id)
    assert record["hedge"] == "p95"


def test_the_hedge_benchmark_prints_its_table() -> None:
    # Not timed: every row and column is produced on a tiny run (bench/hedge.py).
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    args = ["--samples", "4", "--parallel", "4", "--slow-ms", "300", "--tail", "0.5"]
    args += ["--history", "20", "--fast-ms", "20"]
    out = subprocess.run(
        [sys.executable, "-m", "bench.hedge", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for row in ("single call", "race of 2, hedge='p95'", "race of 3, hedge='p95'"):
        assert row in out.stdout
    assert "extra subagents" in out.stdout and "p99" in out.stdout
