"""The advisor's timing model: predicted sequential and parallel time of a plan (pure).

Each task takes its agent's mean measured run time. Tasks leave the coordinator one after another
(its measured dispatch time per task) and each queue's live slots take them in order as they free
up, so more tasks than slots run in waves. A gather adds its merger; a race ends at the expected
moment of the first *valid* result (each agent's measured share of valid outputs). The
sequential alternative is doing the same work one task at a time in one process (a race: trying
the racers in order until one is valid), which is what ``RoiReport.sequential_estimate_s``
measures afterwards (for a race: the racers up to the winner).
"""

from __future__ import annotations

import heapq
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from orchestrator.advisor.limitmodel import Gate, LimitRate, allowed_width
from workers.models import Pattern
from workers.patterns import pattern_of
from workers.request import OrchestrationRequest
from workers.stats import StatsSnapshot

#: Used until the first run of any pattern has been measured.
DEFAULT_COORDINATOR_S = 0.02
DEFAULT_DISPATCH_S = 0.001
DEFAULT_LATENCY_S = 0.005
#: Samples a pattern needs before its own coordinator overhead is trusted.
MIN_OWN_SAMPLES = 3
#: A slot's next task starts this soon after its last one (ack, then the prefetched message).
GAP_S = 0.004
#: The last finisher builds and stores the result.
FINALIZE_S = 0.003


@dataclass
class Estimate:
    """Predicted numbers of one plan; the timings are None when some agent has no history."""

    waves: int
    missing: list[str] = field(default_factory=list)
    assumed: list[str] = field(default_factory=list)
    sequential_s: float | None = None
    parallel_s: float | None = None
    spawn_overhead_s: float | None = None
    #: What one more task costs to send and start (dispatch + start latency); the coordinator's
    #: part of spawn_overhead_s is paid once per spawn, not per task.
    task_overhead_s: float | None = None
    merge_s: float | None = None
    speedup: float | None = None
    cost_s: float | None = None
    saved_s: float = 0.0
    mean_task_s: float = 0.0
    fastest_task_s: float = 0.0
    #: When each message starts and ends, seconds after submit (one per task unless batched).
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    #: Under rate limits (limitmodel.py): the parallel time the slots alone would allow, and
    #: per limit its calls in this plan, the concurrent calls it allows, and its rates.
    unlimited_parallel_s: float | None = None
    limit_calls: dict[str, int] = field(default_factory=dict)
    limit_widths: dict[str, int] = field(default_factory=dict)
    limit_rates: dict[str, LimitRate] = field(default_factory=dict)


@dataclass(frozen=True)
class Overheads:
    """What orchestration adds around the work."""

    coordinator_s: float
    dispatch_s: float
    latency_s: float


def overheads(stats: StatsSnapshot, pattern: Pattern, agents: Sequence[str]) -> Overheads:
    """Measured overheads, falling back to other patterns' and then to defaults."""
    own = stats.patterns.get(pattern.value)
    others = list(stats.patterns.values())
    # A pattern's first runs include the coordinator's cold start (imports, connections); until
    # it has a few samples, the overhead common to all patterns is the better forecast.
    # The low end of the samples is the overhead of a free coordinator: the rest is waiting
    # behind other runs (a burst of submissions), which says nothing about the next one.
    if own is not None and own.overhead.samples >= MIN_OWN_SAMPLES:
        coordinator, dispatch = own.overhead.p10_s, own.dispatch_per_task_s
    elif others:
        coordinator = statistics.median(p.overhead.p10_s for p in others)
        dispatch = statistics.median(p.dispatch_per_task_s for p in others)
    else:
        coordinator, dispatch = DEFAULT_COORDINATOR_S, DEFAULT_DISPATCH_S
    # The low end of the queue waits is the start latency when a slot is free; the rest of the
    # distribution is waiting for slots, which the schedule below models itself.
    waits = [stats.agents[a].wait.p10_s for a in agents if a in stats.agents]
    latency = min(waits) if waits else DEFAULT_LATENCY_S
    return Overheads(coordinator, dispatch or DEFAULT_DISPATCH_S, latency)


def schedule(
    durations: Sequence[float],
    queues: Sequence[str],
    slots: Mapping[str, int],
    ov: Overheads,
    gate: Gate | None = None,
) -> list[tuple[float, float]]:
    """(start, end) of each task, seconds after submit, when slots take tasks in order (and,
    with a ``gate``, when its rate limits let each start: the slot waits with it)."""
    free: dict[str, list[float]] = {}
    out: list[tuple[float, float]] = []
    for i, (d, q) in enumerate(zip(durations, queues, strict=True)):
        heap = free.setdefault(q, [-math.inf] * max(1, slots.get(q, 0)))
        slot_free = heapq.heappop(heap)
        released = ov.coordinator_s + (i + 1) * ov.dispatch_s + ov.latency_s
        start = max(released, slot_free + GAP_S)
        if gate is not None:
            start = gate.start(i, start)
        end = start + d
        if gate is not None:
            gate.record(i, start, end)
        heapq.heappush(heap, end)
        out.append((start, end))
    return out


def batches(
    req: OrchestrationRequest, durations: Sequence[float], queues: Sequence[str]
) -> tuple[list[float], list[str]]:
    """Durations and queues of the messages actually sent: with ``batch_size`` (spawn and
    gather), each agent's tasks go in chunks that run one after another in one slot."""
    size = getattr(req, "batch_size", None) or 1
    if size <= 1 or not pattern_of(req.pattern).batches:
        return list(durations), list(queues)
    by_agent: dict[str, list[int]] = {}
    for i, t in enumerate(req.tasks):
        by_agent.setdefault(t.agent, []).append(i)
    unit_s: list[float] = []
    unit_queues: list[str] = []
    for indices in by_agent.values():
        for start in range(0, len(indices), size):
            chunk = indices[start : start + size]
            unit_s.append(sum(durations[i] for i in chunk))
            unit_queues.append(queues[chunk[0]])
    return unit_s, unit_queues


def waves(queues: Sequence[str], slots: Mapping[str, int]) -> int:
    """Rounds the busiest queue needs for its tasks."""
    counts = Counter(queues)
    return max((math.ceil(k / max(1, slots.get(q, 0))) for q, k in counts.items()), default=0)


def estimate(
    req: OrchestrationRequest,
    stats: StatsSnapshot,
    slots: Mapping[str, int],
    queues: Sequence[str],
    limits: Sequence[Sequence[LimitRate]] = (),
    tokens: Sequence[float] = (),
) -> Estimate:
    """Predict the plan's sequential and parallel time, overheads and cost; ``limits`` and
    ``tokens`` (per task) put the schedule under the agents' rate limits."""
    agents = [t.agent for t in req.tasks]
    est = Estimate(waves=waves(batches(req, [0.0] * len(agents), queues)[1], slots))
    est.missing = sorted({a for a in agents if a not in stats.agents})
    if est.missing:
        return est
    durations = [stats.agents[a].run.mean_s for a in agents]
    ov = overheads(stats, req.pattern, agents)
    unit_s, unit_queues = batches(req, durations, queues)
    # Batched messages carry several calls each: the limits are replayed per call only.
    gate = Gate(limits, tokens) if any(limits) and len(unit_s) == len(agents) else None
    times = schedule(unit_s, unit_queues, slots, ov, gate)
    ends = [e for _, e in times]
    est.starts, est.ends = [s for s, _ in times], ends
    first_start = min(s for s, _ in times)
    members_s = max(ends) - first_start
    est.spawn_overhead_s = ov.coordinator_s + len(unit_s) * ov.dispatch_s + ov.latency_s
    est.task_overhead_s = ov.dispatch_s + ov.latency_s
    est.mean_task_s = statistics.fmean(durations)
    est.fastest_task_s = min(durations)
    est.saved_s = max(0.0, sum(durations) - members_s)
    merge_mean = 0.0
    if req.merge:
        took = stats.mergers.get(req.merge)
        if took is None:
            est.assumed.append(f"merger {req.merge!r}")
        merge_mean = took.took.mean_s if took else 0.0
        est.merge_s = ov.latency_s + merge_mean
    if req.validate_with and req.validate_with not in stats.validators:
        est.assumed.append(f"validator {req.validate_with!r}")
    ok_rates = [stats.agents[a].ok_rate for a in agents]
    timing = pattern_of(req.pattern).timing(
        durations,
        [s for s, _ in times],
        ends,
        ok_rates,
        merge_mean_s=merge_mean,
        merge_wall_s=est.merge_s or 0.0,
    )
    est.parallel_s = timing.parallel_s + FINALIZE_S
    est.sequential_s = timing.sequential_s
    est.cost_s = timing.cost_s
    if gate is not None:
        _under_limits(est, req, durations, unit_queues, slots, ov, limits, tokens, merge_mean)
    est.speedup = est.sequential_s / max(est.parallel_s, 1e-9)
    return est


def _under_limits(
    est: Estimate,
    req: OrchestrationRequest,
    durations: Sequence[float],
    queues: Sequence[str],
    slots: Mapping[str, int],
    ov: Overheads,
    limits: Sequence[Sequence[LimitRate]],
    tokens: Sequence[float],
    merge_mean_s: float,
) -> None:
    """What the limits change: the slots-only time beside, the one-by-one alternative under
    the same limits (a spawn's or gather's every call; a race's stops at its first valid one,
    left as it is), and how wide each limit lets the plan go."""
    assert est.parallel_s is not None and est.sequential_s is not None
    free_ends = [e for _, e in schedule(durations, queues, slots, ov)]
    est.unlimited_parallel_s = est.parallel_s - max(est.ends) + max(free_ends)
    if not pattern_of(req.pattern).claims_win:
        one = ["one"] * len(durations)
        chain = schedule(durations, one, {"one": 1}, Overheads(0.0, 0.0, 0.0), Gate(limits, tokens))
        chained_s = max(e for _, e in chain) - GAP_S * len(durations) + merge_mean_s
        est.sequential_s = max(est.sequential_s, chained_s)
    for name in sorted({lim.name for lims in limits for lim in lims}):
        mine = [i for i, lims in enumerate(limits) if any(lim.name == name for lim in lims)]
        rate = next(lim for lim in limits[mine[0]] if lim.name == name)
        call_s = statistics.fmean(durations[i] for i in mine)
        est.limit_calls[name] = len(mine)
        est.limit_rates[name] = rate
        est.limit_widths[name] = allowed_width(
            rate, call_s, statistics.fmean(tokens[i] for i in mine)
        )
