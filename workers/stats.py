"""Duration and spend statistics per agent, merger, validator and pattern: capped sample lists in
Redis.

A subagent's sample is written by ``finish.lua`` in the same round trip that records its envelope,
so the hot path pays no extra call; merge and coordinator samples are written once per run.
Every list keeps the newest ``stats_samples`` entries and expires after ``stats_ttl_s`` without
use. Readers compute count, mean and percentiles from the kept samples.

An agent sample is ``"<run_s> <wait_s> <o|i|e>"``, followed by ``" <tokens> <cost_usd|->"`` when
the subagent recorded usage (``ctx.record_usage``; ``-``: not every model it used had a price).
A subagent stopped while running (``c``) carries its stop latency before them:
``"<run_s> <wait_s> c <stop_s>[ <tokens> <cost_usd|->]"``. Samples without usage are exactly
the older three-field ones, so readers of either build parse them; an older reader skips the
longer ones. ``run_s`` leaves out the time the subagent waited for a turn under rate limits
(``throttled_s``): that wait depends on the run, not on the agent, and pre-flight predicts it
from the limits themselves (orchestrator/advisor/limitmodel.py).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any, NamedTuple

from pydantic import BaseModel, Field

from workers.models import AgentResult, AgentStatus

AGENT = "agent"
MERGER = "merger"
VALIDATOR = "validator"
PATTERN = "pattern"

#: One-letter outcome codes of agent samples (ok, invalid, error, stopped while running).
_CODES = {
    AgentStatus.OK: "o",
    AgentStatus.INVALID: "i",
    AgentStatus.ERROR: "e",
    AgentStatus.CANCELLED: "c",
}
#: The codes of subagents that did their work: the ones run time, waits and tokens learn from.
_WORKED = ("o", "i", "e")

Sample = tuple[str, str]  # (series, sample text)


def series(kind: str, name: str) -> str:
    """The series name of one agent/merger/validator/pattern, e.g. ``agent:researcher``."""
    return f"{kind}:{name}"


def agent_sample(env: AgentResult) -> Sample | None:
    """The sample of a subagent that did its work or was stopped while running, else None.

    Skipped subagents (and stopped ones whose stop moment is unknown) are left out: they say
    nothing about the agent. A stopped one's run time is not the agent's either: its sample
    teaches the stop latency and what a stopped subagent spent.
    """
    code = _CODES.get(env.status)
    if code is None or env.started_at is None or env.finished_at is None:
        return None
    wait = env.started_at - env.queued_at if env.queued_at is not None else 0.0
    worked_s = max(0.0, env.ran_s - env.throttled_s)
    text = f"{worked_s:.6f} {max(0.0, wait):.6f} {code}"
    if code == "c":
        stop_s = env.cancel_latency_s
        if stop_s is None:
            return None
        text += f" {stop_s:.6f}"
    usage = env.usage
    if usage is not None:
        # A partly priced spend is not its cost: unknown, never a lower bound shown as the cost.
        priced = usage.cost_usd is not None and not usage.unpriced
        cost = f"{usage.cost_usd:.9g}" if priced and usage.cost_usd is not None else "-"
        text += f" {usage.total_tokens} {cost}"
    return series(AGENT, env.agent), text


def duration_sample(kind: str, name: str, seconds: float) -> Sample:
    """A merger's or validator's time."""
    return series(kind, name), f"{max(0.0, seconds):.6f}"


def pattern_sample(pattern: str, overhead_s: float, expand_s: float, n: int) -> Sample:
    """Coordinator overhead (submit to canvas sent) and its dispatch time for ``n`` subtasks."""
    return series(PATTERN, pattern), f"{max(0.0, overhead_s):.6f} {max(0.0, expand_s):.6f} {n}"


# -- reading --------------------------------------------------------------------------------
class Summary(BaseModel):
    """Distribution of one measured duration over the kept samples."""

    samples: int
    mean_s: float
    p10_s: float
    p50_s: float
    p90_s: float
    p95_s: float = 0.0
    p99_s: float = 0.0

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary | None:
        """Summary of the values, or None when there are none."""
        if not values:
            return None
        ordered = sorted(values)
        return cls(
            samples=len(ordered),
            mean_s=statistics.fmean(ordered),
            p10_s=percentile(ordered, 0.10),
            p50_s=percentile(ordered, 0.50),
            p90_s=percentile(ordered, 0.90),
            p95_s=percentile(ordered, 0.95),
            p99_s=percentile(ordered, 0.99),
        )


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (q in 0..1)."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class TokenStats(BaseModel):
    """What one subagent of an agent spends, over the kept samples that carried usage."""

    samples: int = Field(description="Kept samples (subagents that did their work) with usage.")
    mean: float = Field(description="Mean tokens (input plus output) per subagent.")
    per_s: float | None = Field(
        None, description="Tokens per second of run time (total tokens / total run time)."
    )
    priced: int = Field(0, description="Of those samples, how many had a dollar cost.")
    cost_usd_mean: float | None = Field(
        None, description="Mean dollars per subagent over the priced samples (None: none)."
    )


class AgentStats(BaseModel):
    """How long an agent runs and waits, how often it succeeds, and what it spends."""

    name: str
    count: int = Field(description="Samples ever recorded (the summaries use the kept ones).")
    run: Summary
    wait: Summary
    ok_rate: float = Field(description="Fraction of kept samples whose output was valid.")
    tokens: TokenStats | None = Field(None, description="None: no kept sample had usage.")
    stop: Summary | None = Field(
        None,
        description="Stop latency (stop requested to stopped) of its subagents stopped while "
        "running; None: none measured.",
    )


class DurationStats(BaseModel):
    """How long a merger or validator takes."""

    name: str
    count: int
    took: Summary


class PatternStats(BaseModel):
    """Coordinator overhead of one pattern."""

    pattern: str
    count: int
    overhead: Summary
    dispatch_per_task_s: float = Field(description="Mean canvas send time per subtask.")


class StatsSnapshot(BaseModel):
    """Everything the advisor knows about past durations (empty maps: no history)."""

    agents: dict[str, AgentStats] = Field(default_factory=dict)
    mergers: dict[str, DurationStats] = Field(default_factory=dict)
    validators: dict[str, DurationStats] = Field(default_factory=dict)
    patterns: dict[str, PatternStats] = Field(default_factory=dict)


def snapshot(names: Sequence[str], replies: Sequence[Any]) -> StatsSnapshot:
    """Parse the replies of LRANGE per series then HMGET of their counts (malformed samples
    are skipped); ``workers.store`` reads them."""
    counts = replies[len(names)]
    snap = StatsSnapshot()
    for i, name in enumerate(names):
        texts = [str(t) for t in replies[i] or []]
        kind, _, what = name.partition(":")
        if kind == AGENT:
            _add_agent(snap, what, counts[i], texts)
            continue
        rows = [r for r in (_floats(t) for t in texts) if r]
        if not rows:
            continue
        count = int(counts[i] or len(rows))
        if kind in (MERGER, VALIDATOR):
            took = Summary.of([r[0] for r in rows])
            assert took is not None
            target = snap.mergers if kind == MERGER else snap.validators
            target[what] = DurationStats(name=what, count=count, took=took)
        elif kind == PATTERN:
            overhead = Summary.of([r[0] for r in rows])
            assert overhead is not None
            per_task = [r[1] / r[2] for r in rows if len(r) >= 3 and r[2] > 0]
            snap.patterns[what] = PatternStats(
                pattern=what,
                count=count,
                overhead=overhead,
                # The median: a cold first run (imports, connections) is no forecast.
                dispatch_per_task_s=statistics.median(per_task) if per_task else 0.0,
            )
    return snap


class _Row(NamedTuple):
    run_s: float
    wait_s: float
    code: str
    stop_s: float | None
    tokens: int | None
    cost_usd: float | None


def _agent_row(text: str) -> _Row | None:
    """One agent sample, or None when malformed."""
    parts = text.split()
    if len(parts) < 3 or parts[2] not in ("o", "i", "e", "c"):
        return None
    nums = _floats(" ".join(parts[:2]))
    rest = parts[3:]
    stop: float | None = None
    if parts[2] == "c":
        if not rest or not (stops := _floats(rest[0])):
            return None
        stop, rest = stops[0], rest[1:]
    if len(nums) != 2 or len(rest) not in (0, 2) or (rest and not rest[0].isdigit()):
        return None
    tokens = int(rest[0]) if rest else None
    cost = _floats(rest[1]) if rest and rest[1] != "-" else []
    return _Row(nums[0], nums[1], parts[2], stop, tokens, cost[0] if cost else None)


def _add_agent(snap: StatsSnapshot, name: str, count: str | None, texts: list[str]) -> None:
    parsed = [r for r in (_agent_row(t) for t in texts) if r is not None]
    rows = [r for r in parsed if r.code in _WORKED]
    if not rows:
        return
    # Errors are often instant: time only the samples that did the work, if there are any.
    timed = [r for r in rows if r.code != "e"] or rows
    run = Summary.of([r.run_s for r in timed])
    wait = Summary.of([r.wait_s for r in rows])
    assert run is not None and wait is not None
    snap.agents[name] = AgentStats(
        name=name,
        count=int(count or len(rows)),
        run=run,
        wait=wait,
        ok_rate=sum(1 for r in rows if r.code == "o") / len(rows),
        tokens=_tokens(rows),
        stop=Summary.of([r.stop_s for r in parsed if r.stop_s is not None]),
    )


def _tokens(rows: Sequence[_Row]) -> TokenStats | None:
    used = [r for r in rows if r.tokens is not None]
    if not used:
        return None
    total = sum(r.tokens or 0 for r in used)
    ran_s = sum(r.run_s for r in used)
    costs = [r.cost_usd for r in used if r.cost_usd is not None]
    return TokenStats(
        samples=len(used),
        mean=total / len(used),
        # A ratio of sums: an instant error that spent nothing does not make the rate infinite.
        per_s=total / ran_s if ran_s > 0 else None,
        priced=len(costs),
        cost_usd_mean=statistics.fmean(costs) if costs else None,
    )


def _floats(text: str) -> list[float]:
    out = []
    for part in text.split():
        try:
            out.append(float(part))
        except ValueError:
            continue
    return out
