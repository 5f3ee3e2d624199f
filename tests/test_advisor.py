"""The pre-flight advisor as a pure function: verdicts, checks, the timing model, schemas, stats.

No Redis here: catalog entries come from the same pydantic models the test agents use, and the
statistics and capacity are built by hand, so every number below can be worked out on paper.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from pydantic import BaseModel

from orchestrator import Capacity, CheckStatus, OrchestrationRequest, Pattern, Verdict, advise
from orchestrator.advisor import Preflight
from orchestrator.advisor.costmodel import GAP_S, Overheads, schedule
from orchestrator.advisor.schemas import incompatibilities
from tests.agents_advisor import Joined, Nap, Napped, Ranked, Said, Scored, Words
from workers.models import AgentKind, CatalogEntry, Execution, WorkerInfo
from workers.patterns.race import first_valid, in_order
from workers.settings import AdvisorSettings
from workers.stats import (
    AgentStats,
    DurationStats,
    PatternStats,
    StatsSnapshot,
    Summary,
    percentile,
    snapshot,
)

pytestmark = pytest.mark.filterwarnings("error")


def entry(
    name: str, kind: AgentKind, inp: type[BaseModel], out: type[BaseModel] | None
) -> CatalogEntry:
    return CatalogEntry(
        name=name,
        kind=kind,
        task_name=f"agents.{name}" if kind is AgentKind.AGENT else None,
        input_schema=inp.model_json_schema(),
        output_schema=out.model_json_schema() if out else None,
        queue="agents",
    )


ENTRIES = [
    entry("nap", AgentKind.AGENT, Nap, Napped),
    entry("tiny", AgentKind.AGENT, Words, Said),
    entry("join_said", AgentKind.MERGER, Said, Joined),
    entry("needs_score", AgentKind.MERGER, Scored, Ranked),
    entry("said_good", AgentKind.VALIDATOR, Said, None),
]


def summary(value: float) -> Summary:
    s = Summary.of([value] * 5)
    assert s is not None
    return s


def agent_stats(name: str, run_s: float, wait_s: float = 0.005, ok: float = 1.0) -> AgentStats:
    return AgentStats(name=name, count=5, run=summary(run_s), wait=summary(wait_s), ok_rate=ok)


def stats(**agents: float) -> StatsSnapshot:
    return StatsSnapshot(
        agents={a: agent_stats(a, s) for a, s in agents.items()},
        patterns={
            p.value: PatternStats(
                pattern=p.value, count=5, overhead=summary(0.01), dispatch_per_task_s=0.001
            )
            for p in Pattern
        },
    )


def capacity(slots_per_worker: int = 2, workers: int = 2, pool: str = "prefork") -> Capacity:
    return Capacity.from_workers(
        WorkerInfo(
            hostname=f"w{i}@h",
            role="worker",
            queues=["agents"],
            pool=pool,
            concurrency=slots_per_worker,
            pid=i,
            heartbeat_at=time.time(),
        )
        for i in range(workers)
    )


def request(
    pattern: Pattern, tasks: list[tuple[str, dict[str, Any]]], **kw: Any
) -> OrchestrationRequest:
    return OrchestrationRequest.model_validate(
        {"pattern": pattern, "tasks": [{"agent": a, "payload": p} for a, p in tasks], **kw}
    )


def naps(n: int, seconds: float = 0.3) -> list[tuple[str, dict[str, Any]]]:
    return [("nap", {"seconds": seconds, "tag": i}) for i in range(n)]


def check(pf: Preflight, name: str) -> tuple[CheckStatus, str]:
    [c] = [c for c in pf.checks if c.name == name]
    return c.status, c.reason


# -- verdicts ---------------------------------------------------------------------------------
def test_wide_plan_of_substantial_tasks_pays_in_waves() -> None:
    pf = advise(request(Pattern.SPAWN, naps(8)), ENTRIES, stats(nap=0.3), capacity())
    assert pf.verdict is Verdict.PAYS
    assert pf.waves == 2 and pf.slots == {"agents": 4}
    assert pf.sequential_s == pytest.approx(2.4)
    # Two waves of 0.3 s after ~10 ms coordinator, dispatch and start latency.
    assert pf.parallel_s is not None and 0.6 < pf.parallel_s < 0.65
    assert pf.speedup is not None and 3.6 < pf.speedup < 4.0
    assert check(pf, "width")[0] is CheckStatus.WARN
    assert "8 tasks on 4 live slots" in check(pf, "width")[1] and "2 waves" in check(pf, "width")[1]
    assert [c.status for c in pf.checks if c.name != "width"] == [CheckStatus.PASS] * 4
    assert pf.reasons() == [f"width warn: {check(pf, 'width')[1]}"]


def test_same_plan_on_one_slot_does_not_pay() -> None:
    pf = advise(request(Pattern.SPAWN, naps(8)), ENTRIES, stats(nap=0.3), capacity(1, 1))
    assert pf.waves == 8
    assert pf.speedup is not None and pf.speedup < 1.0
    assert pf.verdict is Verdict.DOES_NOT_PAY


def test_tiny_tasks_do_not_pay_and_say_why() -> None:
    tasks = [("tiny", {"text": f"t{i}"}) for i in range(8)]
    pf = advise(request(Pattern.SPAWN, tasks), ENTRIES, stats(tiny=0.001), capacity())
    assert pf.verdict is Verdict.DOES_NOT_PAY
    status, reason = check(pf, "cost")
    assert status is CheckStatus.FAIL
    assert "too small to beat the spawn overhead" in reason and "batch_size" in reason


def test_long_tasks_are_never_too_small_whatever_the_spawn_costs() -> None:
    # A slow coordinator (8 s before the first task leaves) makes two 6.6 s tasks not pay; but
    # the tasks are not "too small": each costs ~6 ms to send and start, against 6.6 s of run.
    snap = stats(nap=6.6)
    for p in snap.patterns.values():
        p.overhead = summary(8.0)
    pf = advise(request(Pattern.SPAWN, naps(2, 6.6)), ENTRIES, snap, capacity())
    assert pf.spawn_overhead_s is not None and pf.spawn_overhead_s > 6.6  # the whole spawn's
    assert pf.verdict is Verdict.DOES_NOT_PAY
    status, reason = check(pf, "cost")
    assert status is CheckStatus.FAIL
    assert "too small" not in reason, reason
    assert "too little parallel work for the overhead (spawning costs 8007 ms in all" in reason


def test_marginal_between_the_thresholds() -> None:
    # Two 50 ms tasks on 4 slots: 100 ms of work in about 70 ms.
    pf = advise(request(Pattern.SPAWN, naps(2, 0.05)), ENTRIES, stats(nap=0.05), capacity())
    assert pf.speedup is not None and 1.1 <= pf.speedup < 1.5, pf.speedup
    assert pf.verdict is Verdict.MARGINAL
    assert check(pf, "cost")[0] is CheckStatus.WARN


def test_no_history_is_unknown_and_says_how_to_fix_it() -> None:
    pf = advise(request(Pattern.SPAWN, naps(3)), ENTRIES, StatsSnapshot(), capacity())
    assert pf.verdict is Verdict.UNKNOWN
    assert pf.speedup is None and pf.parallel_s is None
    status, reason = check(pf, "cost")
    assert status is CheckStatus.WARN and "no duration history for agent(s) nap" in reason


def test_thresholds_are_configurable() -> None:
    req = request(Pattern.SPAWN, naps(8))
    strict = AdvisorSettings(pays_speedup=5.0, marginal_speedup=4.5)
    pf = advise(req, ENTRIES, stats(nap=0.3), capacity(), strict)
    assert pf.verdict is Verdict.DOES_NOT_PAY  # x3.8 is below both thresholds now
    narrow = AdvisorSettings(useful_width=4)
    status, reason = check(advise(req, ENTRIES, stats(nap=0.3), capacity(8), narrow), "width")
    assert status is CheckStatus.WARN and "useful width 4" in reason


# -- independence -----------------------------------------------------------------------------
def test_duplicated_inputs_fail_whatever_the_speed() -> None:
    tasks = [*naps(4), ("nap", {"tag": 1, "seconds": 0.3})]  # same payload, other key order
    pf = advise(request(Pattern.SPAWN, tasks), ENTRIES, stats(nap=0.3), capacity())
    status, reason = check(pf, "independence")
    assert status is CheckStatus.FAIL and "#4 repeats #1" in reason
    assert pf.verdict is Verdict.DOES_NOT_PAY


def test_identical_racers_only_warn() -> None:
    tasks = [("tiny", {"text": "same"})] * 2
    req = request(Pattern.RACE, tasks, validate="said_good")
    status, reason = check(advise(req, ENTRIES, stats(tiny=0.2), capacity()), "independence")
    assert status is CheckStatus.WARN and "nondeterministic" in reason


def test_declared_dependencies_fail() -> None:
    req = OrchestrationRequest.model_validate(
        {
            "pattern": "parallel-spawn",
            "tasks": [
                {"agent": "nap", "payload": {"seconds": 0.3, "tag": 0}},
                {"agent": "nap", "payload": {"seconds": 0.3, "tag": 1}, "depends_on": [0]},
            ],
        }
    )
    status, reason = check(advise(req, ENTRIES, stats(nap=0.3), capacity()), "independence")
    assert status is CheckStatus.FAIL and "#1 needs [0]" in reason


# -- structure --------------------------------------------------------------------------------
def test_gather_merger_must_accept_every_agent_output() -> None:
    tasks = [("tiny", {"text": "a"}), ("tiny", {"text": "b"})]
    bad = advise(
        request(Pattern.GATHER, tasks, merge="needs_score"), ENTRIES, stats(tiny=0.2), capacity()
    )
    status, reason = check(bad, "structure")
    assert status is CheckStatus.FAIL
    assert "merger 'needs_score' input does not accept agent 'tiny' output" in reason
    assert "score: required by the input" in reason
    good = advise(
        request(Pattern.GATHER, tasks, merge="join_said"), ENTRIES, stats(tiny=0.2), capacity()
    )
    assert check(good, "structure") == (
        CheckStatus.PASS,
        "typed outputs, accepted by merger 'join_said'",
    )


def test_race_validator_must_accept_racer_output() -> None:
    req = request(Pattern.RACE, naps(2), validate="said_good")
    status, reason = check(advise(req, ENTRIES, stats(nap=0.3), capacity()), "structure")
    assert status is CheckStatus.FAIL and "validator 'said_good'" in reason and "text" in reason


def test_missing_output_model_fails_and_freeform_warns() -> None:
    untyped = CatalogEntry(
        name="loose",
        kind=AgentKind.AGENT,
        task_name="agents.loose",
        input_schema=Words.model_json_schema(),
        output_schema={"type": "object", "title": "Anything"},
        queue="agents",
    )
    req = request(Pattern.SPAWN, [("loose", {"text": "x"})])
    assert (
        check(advise(req, [untyped], StatsSnapshot(), capacity()), "structure")[0]
        is CheckStatus.WARN
    )
    none = untyped.model_copy(update={"output_schema": None})
    assert (
        check(advise(req, [none], StatsSnapshot(), capacity()), "structure")[0] is CheckStatus.FAIL
    )


# -- cost, width, race ---------------------------------------------------------------------------
def test_merge_slower_than_the_time_saved_fails() -> None:
    snap = stats(nap=0.3)
    snap.mergers["join_naps"] = DurationStats(name="join_naps", count=5, took=summary(2.0))
    entries = [*ENTRIES, entry("join_naps", AgentKind.MERGER, Napped, Joined)]
    pf = advise(request(Pattern.GATHER, naps(4), merge="join_naps"), entries, snap, capacity())
    status, reason = check(pf, "cost")
    assert (
        status is CheckStatus.FAIL
        and "the merge (2" in reason
        and "time parallelism saves" in reason
    )
    assert pf.merge_s is not None and pf.merge_s > 2.0


def test_no_live_worker_for_the_queue_fails() -> None:
    pf = advise(request(Pattern.SPAWN, naps(2)), ENTRIES, stats(nap=0.3), Capacity())
    status, reason = check(pf, "width")
    assert status is CheckStatus.FAIL and "no live worker consumes queue(s) ['agents']" in reason
    assert pf.verdict is Verdict.DOES_NOT_PAY


def test_race_without_validator_is_flagged() -> None:
    pf = advise(request(Pattern.RACE, naps(3)), ENTRIES, stats(nap=0.3), capacity())
    status, reason = check(pf, "race")
    assert status is CheckStatus.WARN and "no validator" in reason


def test_race_with_a_slow_validator_or_an_uncancellable_pool_warns() -> None:
    snap = stats(tiny=0.1)
    snap.validators["said_good"] = DurationStats(name="said_good", count=5, took=summary(0.05))
    tasks = [("tiny", {"text": t}) for t in ("a", "b")]
    req = request(Pattern.RACE, tasks, validate="said_good")
    status, reason = check(advise(req, ENTRIES, snap, capacity()), "race")
    assert status is CheckStatus.WARN and "validator 'said_good' takes 50 ms" in reason
    snap.validators["said_good"] = DurationStats(name="said_good", count=5, took=summary(0.0001))
    status, reason = check(advise(req, ENTRIES, snap, capacity()), "race")
    assert status is CheckStatus.PASS and "losers can be interrupted (prefork)" in reason
    status, reason = check(advise(req, ENTRIES, snap, capacity(pool="gevent")), "race")
    assert status is CheckStatus.WARN and "cannot interrupt" in reason


def test_race_of_differing_racers_pays_against_trying_them_in_order() -> None:
    snap = stats()
    snap.agents["nap"] = agent_stats("nap", 1.0, ok=0.5)  # half the approaches fail
    pf = advise(request(Pattern.RACE, naps(4, 1.0)), ENTRIES, snap, capacity())
    # In order: 1 + 0.5 + 0.25 + 0.125 s expected; in parallel: all end together at ~1 s.
    assert pf.sequential_s == pytest.approx(1.875)
    assert pf.parallel_s is not None and 1.0 < pf.parallel_s < 1.05


def test_batches_run_in_one_slot_each() -> None:
    req = request(Pattern.SPAWN, naps(8, 0.1), batch_size=4)
    pf = advise(req, ENTRIES, stats(nap=0.1), capacity())
    assert pf.waves == 1  # two messages of four
    assert pf.parallel_s is not None and 0.4 < pf.parallel_s < 0.45


def test_prediction_summary_round_trips() -> None:
    pf = advise(request(Pattern.SPAWN, naps(8)), ENTRIES, stats(nap=0.3), capacity())
    p = pf.prediction("auto", Execution.SEQUENTIAL)
    assert p.verdict is Verdict.PAYS and p.policy == "auto" and p.execution is Execution.SEQUENTIAL
    assert p.speedup == pf.speedup and p.reasons == pf.reasons()
    assert type(p).model_validate_json(p.model_dump_json()) == p
    assert Preflight.model_validate_json(pf.model_dump_json()) == pf


# -- the timing model ---------------------------------------------------------------------------
def test_schedule_fills_slots_in_order() -> None:
    ov = Overheads(coordinator_s=0.0, dispatch_s=0.0, latency_s=0.0)
    times = schedule([1.0, 2.0, 1.0, 1.0, 1.0], ["q"] * 5, {"q": 2}, ov)
    g = GAP_S  # a slot takes its next task this long after finishing one
    expected = [(0, 1), (0, 2), (1 + g, 2 + g), (2 + g, 3 + g), (2 + 2 * g, 3 + 2 * g)]
    assert [pytest.approx(t) for t in times] == expected


def test_first_valid_and_in_order_expectations() -> None:
    assert first_valid([1.0, 2.0], [1.0, 1.0]) == 1.0
    assert first_valid([1.0, 2.0], [0.5, 1.0]) == pytest.approx(1.5)
    assert first_valid([1.0, 2.0], [0.0, 0.0]) == 2.0
    assert in_order([1.0, 2.0, 4.0], [0.5, 0.5, 1.0]) == pytest.approx(1 + 1 + 1)


# -- schemas ------------------------------------------------------------------------------------
class Inner(BaseModel):
    x: int


class Outer(BaseModel):
    inner: Inner
    tags: list[str]
    note: str | None = None


class WantsFloat(BaseModel):
    inner: dict[str, float]
    tags: list[str]


class WantsInts(BaseModel):
    tags: list[int]


class Strict(BaseModel):
    model_config = {"extra": "forbid"}
    tags: list[str]


def test_schema_compatibility() -> None:
    s = Outer.model_json_schema()
    assert incompatibilities(Outer.model_json_schema(), s) == []
    assert incompatibilities(WantsFloat.model_json_schema(), s) == []  # int is a number
    problems = incompatibilities(WantsInts.model_json_schema(), s)
    assert problems == ["tags[]: the output may be string, the input needs integer"]
    assert incompatibilities(Strict.model_json_schema(), s) == [
        "<root>: output fields ['inner', 'note'] are forbidden by the input"
    ]

    # An optional output (None allowed) into a required string input: None may be rejected.
    class NeedsNote(BaseModel):
        note: str

    assert incompatibilities(NeedsNote.model_json_schema(), s) == [
        "note: the output may be null, the input needs string"
    ]
    assert incompatibilities({}, s) == []  # Any accepts everything
    assert incompatibilities(WantsInts.model_json_schema(), {"title": "Any"})[0].startswith(
        "<root>: the output is untyped"
    )


# -- statistics parsing -------------------------------------------------------------------------
def test_snapshot_parses_samples_and_skips_malformed_ones() -> None:
    names = ["agent:nap", "merger:m", "pattern:parallel-spawn", "agent:never"]
    replies = [
        ["0.3 0.01 o", "0.5 0.02 i", "0.001 0.0 e", "garbage", "0.4 x o"],
        ["0.2", "0.4"],
        ["0.01 0.008 8", "0.03 0.004 2"],
        [],
        ["12", "2", "2", None],
    ]
    snap = snapshot(names, replies)
    nap = snap.agents["nap"]
    assert nap.count == 12 and nap.run.samples == 2  # the error's instant run is not timed
    assert nap.run.mean_s == pytest.approx(0.4) and nap.ok_rate == pytest.approx(1 / 3)
    assert snap.mergers["m"].took.p50_s == pytest.approx(0.3)
    assert snap.patterns["parallel-spawn"].dispatch_per_task_s == pytest.approx(0.0015)
    assert "never" not in snap.agents


def test_percentile_interpolates() -> None:
    assert percentile([1.0], 0.9) == 1.0
    assert percentile([0.0, 10.0], 0.9) == pytest.approx(9.0)
    assert percentile([1.0, 2.0, 3.0], 0.5) == 2.0


def test_capacity_counts_live_worker_slots_and_reports_a_backlog() -> None:
    workers = [
        WorkerInfo(
            hostname=f"{role}@h",
            role=role,
            queues=queues,
            pool="prefork",
            concurrency=4,
            pid=1,
            heartbeat_at=time.time(),
        )
        for role, queues in (("worker", ["agents", "gpu"]), ("coordinator", ["orchestrator"]))
    ]
    cap = Capacity.from_workers(workers, {"agents": 5})
    assert cap.slots("agents") == 4 and cap.slots("gpu") == 4 and cap.slots("orchestrator") == 0
    status, reason = check(
        advise(request(Pattern.SPAWN, naps(2)), ENTRIES, stats(nap=0.3), cap), "width"
    )
    assert status is CheckStatus.WARN and "5 messages already wait in queue 'agents'" in reason
