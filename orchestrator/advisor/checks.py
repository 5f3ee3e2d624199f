"""The five pre-flight checks (independence, structure, cost, width, race) and the live
capacity they judge against. Pure functions, used by :func:`orchestrator.advisor.advise`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from enum import StrEnum

from pydantic import BaseModel, Field

from orchestrator.advisor.costmodel import Estimate
from orchestrator.advisor.schemas import incompatibilities
from workers.models import AgentKind, CatalogEntry, WorkerInfo
from workers.patterns import pattern_of
from workers.request import OrchestrationRequest
from workers.settings import AdvisorSettings
from workers.stats import StatsSnapshot

#: Catalog entries by (kind, name).
Entries = Mapping[tuple[AgentKind, str], CatalogEntry]

#: Pools whose running tasks our cancel listener can interrupt.
CANCELLABLE_POOLS = {"prefork", "thread", "threads", "solo"}
#: A validator slower than this share of the fastest racer's run time is worth a warning.
SLOW_VALIDATOR_SHARE = 0.2


class CheckStatus(StrEnum):
    """Outcome of one pre-flight check."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


class Check(BaseModel):
    """One line of the pre-flight: what was checked, how it went, and why."""

    name: str
    status: CheckStatus
    reason: str


class QueueCapacity(BaseModel):
    """Live worker slots consuming one queue."""

    queue: str
    slots: int = 0
    workers: list[str] = Field(default_factory=list)
    pools: list[str] = Field(default_factory=list)
    backlog: int = Field(0, description="Messages already waiting in the queue.")


class Capacity(BaseModel):
    """Live worker capacity per queue (from worker heartbeats)."""

    queues: dict[str, QueueCapacity] = Field(default_factory=dict)

    @classmethod
    def from_workers(
        cls, workers: Iterable[WorkerInfo], backlog: Mapping[str, int] | None = None
    ) -> Capacity:
        """Capacity of these live worker processes (coordinators do not count)."""
        queues: dict[str, QueueCapacity] = {}
        for w in workers:
            if w.role != "worker":
                continue
            for q in w.queues:
                cap = queues.setdefault(q, QueueCapacity(queue=q))
                cap.slots += w.slots_for(q)
                cap.workers.append(w.hostname)
                if w.pool not in cap.pools:
                    cap.pools.append(w.pool)
        for q, waiting in (backlog or {}).items():
            queues.setdefault(q, QueueCapacity(queue=q)).backlog = waiting
        return cls(queues=queues)

    def slots(self, queue: str) -> int:
        """Slots of the live workers consuming ``queue`` (0: nobody)."""
        cap = self.queues.get(queue)
        return cap.slots if cap else 0


def independence(req: OrchestrationRequest) -> Check:
    """Duplicated inputs (same agent and payload) and declared dependencies."""
    seen: dict[tuple[str, str], int] = {}
    dupes: list[str] = []
    for i, t in enumerate(req.tasks):
        key = (t.agent, json.dumps(t.payload, sort_keys=True, default=str))
        if key in seen:
            dupes.append(f"#{i} repeats #{seen[key]}")
        else:
            seen[key] = i
    deps = [f"#{i} needs {t.depends_on}" for i, t in enumerate(req.tasks) if t.depends_on]
    if deps:
        return Check(
            name="independence",
            status=CheckStatus.FAIL,
            reason=f"declared dependencies ({'; '.join(deps[:5])}): these tasks cannot run at "
            "the same time; run them in order (preflight='auto' does) or fold them into one task",
        )
    if dupes and not pattern_of(req.pattern).duplicates_fail:
        return Check(
            name="independence",
            status=CheckStatus.WARN,
            reason=f"identical racers ({'; '.join(dupes[:5])}): only useful if the agent is "
            "nondeterministic; otherwise vary the approach (payload) of each racer",
        )
    if dupes:
        return Check(
            name="independence",
            status=CheckStatus.FAIL,
            reason=f"duplicated inputs ({'; '.join(dupes[:5])}): the same agent and payload "
            "twice is the same work done twice; remove the repeats",
        )
    return Check(
        name="independence",
        status=CheckStatus.PASS,
        reason=f"{len(req.tasks)} distinct tasks, no declared dependencies",
    )


def structure(req: OrchestrationRequest, catalog: Entries) -> Check:
    """Typed outputs, and the merger's (validator's) input accepts every agent's output."""
    fails: list[str] = []
    warns: list[str] = []
    agents = sorted({t.agent for t in req.tasks})
    for name in agents:
        entry = catalog.get((AgentKind.AGENT, name))
        if entry is None:
            fails.append(f"agent {name!r} is not in the catalog")
        elif not entry.output_schema:
            fails.append(f"agent {name!r} has no output model")
        elif not entry.output_schema.get("properties"):
            warns.append(f"agent {name!r} output is freeform (no fields): hard to merge or check")
    consumer = pattern_of(req.pattern).consumer(req)
    if consumer is not None:
        target = catalog.get(consumer)
        if target is None:
            fails.append(f"{consumer[0].value} {consumer[1]!r} is not in the catalog")
        else:
            for name in agents:
                entry = catalog.get((AgentKind.AGENT, name))
                if entry is None or not entry.output_schema:
                    continue
                problems = incompatibilities(target.input_schema, entry.output_schema)
                if problems:
                    fails.append(
                        f"{consumer[0].value} {target.name!r} input does not accept agent "
                        f"{name!r} output: {'; '.join(problems[:4])}"
                    )
    if fails:
        return Check(name="structure", status=CheckStatus.FAIL, reason="; ".join(fails))
    if warns:
        return Check(name="structure", status=CheckStatus.WARN, reason="; ".join(warns))
    what = "typed outputs"
    if consumer is not None:
        what += f", accepted by {consumer[0].value} {consumer[1]!r}"
    return Check(name="structure", status=CheckStatus.PASS, reason=what)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def cost(req: OrchestrationRequest, est: Estimate, config: AdvisorSettings) -> Check:
    """Tasks too small to beat their own overhead, too little parallel work for the spawn's; a
    merge slower than the time saved."""
    if est.missing:
        return Check(
            name="cost",
            status=CheckStatus.WARN,
            reason=f"no duration history for agent(s) {', '.join(est.missing)}: run them once "
            "(any pattern) so pre-flight can predict; verdict unknown",
        )
    assert est.speedup is not None and est.sequential_s is not None
    assert est.parallel_s is not None and est.spawn_overhead_s is not None
    assert est.task_overhead_s is not None
    notes = [f"{a} has no merge/validator timing yet (assumed 0)" for a in est.assumed]
    summary = (
        f"predicted x{est.speedup:.2f}: {_ms(est.sequential_s)} one by one vs "
        f"{_ms(est.parallel_s)} in parallel"
    )
    # Like with like: a task is too small when it runs shorter than sending and starting it
    # takes; the whole spawn's overhead (its coordinator part is paid once) is not per task.
    small = est.mean_task_s < est.task_overhead_s
    merge_s = est.merge_s or 0.0
    if merge_s and merge_s >= est.saved_s and not small:
        return Check(
            name="cost",
            status=CheckStatus.FAIL,
            reason=f"the merge ({_ms(merge_s)}) is slower than the time parallelism "
            f"saves ({_ms(est.saved_s)}); {summary}: merge less, or split the work differently",
        )
    marginal = pattern_of(req.pattern).marginal_speedup_fails()
    if est.speedup < config.marginal_speedup and marginal and not small:
        return Check(
            name="cost",
            status=CheckStatus.FAIL,
            reason="the first racer alone would usually do: racers take similar times and "
            f"mostly succeed, so racing buys nothing; {summary}: race approaches that differ",
        )
    if est.speedup < config.marginal_speedup and small:
        return Check(
            name="cost",
            status=CheckStatus.FAIL,
            reason=f"tasks too small to beat the spawn overhead (each task runs "
            f"~{_ms(est.mean_task_s)}, sending and starting one costs "
            f"~{_ms(est.task_overhead_s)}); {summary}: send several per message "
            "(batch_size=...), fold them into fewer, larger tasks, or run them in one process",
        )
    if est.speedup < config.marginal_speedup:
        return Check(
            name="cost",
            status=CheckStatus.FAIL,
            reason=f"too little parallel work for the overhead (spawning costs "
            f"{_ms(est.spawn_overhead_s)} in all, parallelism saves {_ms(est.saved_s)}); "
            f"{summary}: run it in one process, or give the live slots more work to share",
        )
    status = CheckStatus.WARN if est.speedup < config.pays_speedup or notes else CheckStatus.PASS
    return Check(name="cost", status=status, reason="; ".join([summary, *notes]))


def width(
    req: OrchestrationRequest,
    capacity: Capacity,
    queues: list[str],
    est: Estimate,
    config: AdvisorSettings,
) -> Check:
    """Fan-out wider than the useful width or the live capacity; queues nobody consumes."""
    counts = Counter(queues)
    idle = sorted(q for q in counts if capacity.slots(q) == 0)
    if idle:
        return Check(
            name="width",
            status=CheckStatus.FAIL,
            reason=f"no live worker consumes queue(s) {idle}: nothing would run them; start "
            f"one (`orchestrator worker -Q {','.join(idle)}`)",
        )
    notes = []
    n = len(req.tasks)
    if n > config.useful_width:
        notes.append(
            f"fan-out {n} is wider than the useful width {config.useful_width} "
            "(ORCH_ADVISOR__USEFUL_WIDTH): batch the work"
        )
    for q, k in sorted(counts.items()):
        slots = capacity.slots(q)
        if k > slots:
            notes.append(f"{k} tasks on {slots} live slots of queue {q!r}: {est.waves} waves")
        backlog = capacity.queues[q].backlog
        if backlog:
            notes.append(f"{backlog} messages already wait in queue {q!r} (not in the forecast)")
    notes += limit_notes(est)
    if notes:
        return Check(name="width", status=CheckStatus.WARN, reason="; ".join(notes))
    slots_text = ", ".join(f"{q}: {capacity.slots(q)}" for q in sorted(counts))
    return Check(
        name="width", status=CheckStatus.PASS, reason=f"{n} tasks fit the live slots ({slots_text})"
    )


#: The limits bind when they make the plan this much slower than its slots alone would.
LIMIT_BINDS = 1.05


def limit_notes(est: Estimate) -> list[str]:
    """How wide the rate limits let the plan usefully go, when they bind (none otherwise)."""
    free_s, limited_s = est.unlimited_parallel_s, est.parallel_s
    if free_s is None or limited_s is None or limited_s <= free_s * LIMIT_BINDS:
        return []
    notes = []
    for name, calls in est.limit_calls.items():
        width = est.limit_widths[name]
        if calls <= width:
            continue
        notes.append(
            f"rate limit {name!r} ({est.limit_rates[name].describe()}) allows ~{width} "
            f"concurrent calls: its {calls} calls take ~{_ms(limited_s)} under it, not the "
            f"{_ms(free_s)} the slots allow; a fan-out wider than ~{width} only waits"
        )
    return notes


def race(
    req: OrchestrationRequest,
    stats: StatsSnapshot,
    capacity: Capacity,
    queues: list[str],
    est: Estimate,
) -> Check:
    """A validator is given and cheap; the workers' pools can interrupt losing racers."""
    if not pattern_of(req.pattern).claims_win:
        return Check(name="race", status=CheckStatus.PASS, reason="not a race: nothing to check")
    warns: list[str] = []
    if len(req.tasks) < 2:
        warns.append("a race of one racer is just a task")
    if not req.validate_with:
        warns.append(
            "no validator: the first output that parses wins, even a wrong one; register a "
            "@validator and pass validate=<name>"
        )
    else:
        took = stats.validators.get(req.validate_with)
        if (
            took
            and est.fastest_task_s
            and took.took.p50_s > SLOW_VALIDATOR_SHARE * est.fastest_task_s
        ):
            warns.append(
                f"validator {req.validate_with!r} takes {_ms(took.took.p50_s)}, over "
                f"{SLOW_VALIDATOR_SHARE:.0%} of the fastest racer ({_ms(est.fastest_task_s)}): "
                "make the check cheaper"
            )
    pools = sorted({p for q in set(queues) for p in _pools(capacity, q)})
    stuck = [p for p in pools if p not in CANCELLABLE_POOLS]
    if stuck:
        warns.append(
            f"pool(s) {stuck} cannot interrupt a running racer: losers run to their end and are "
            "paid for in full; use prefork, threads or solo workers"
        )
    if warns:
        return Check(name="race", status=CheckStatus.WARN, reason="; ".join(warns))
    validator = f"validator {req.validate_with!r}"
    took = stats.validators.get(req.validate_with or "")
    if took:
        validator += f" ~{_ms(took.took.p50_s)}"
    return Check(
        name="race",
        status=CheckStatus.PASS,
        reason=f"{validator}; losers can be interrupted ({', '.join(pools) or 'no live pool'})",
    )


def _pools(capacity: Capacity, queue: str) -> list[str]:
    cap = capacity.queues.get(queue)
    return cap.pools if cap else []
