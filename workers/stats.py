"""Duration statistics per agent, merger, validator and pattern: capped sample lists in Redis.

A subagent's sample is written by ``finish.lua`` in the same round trip that records its envelope,
so the hot path pays no extra call; merge and coordinator samples are written once per run.
Every list keeps the newest ``stats_samples`` entries and expires after ``stats_ttl_s`` without
use. Readers compute count, mean and percentiles from the kept samples.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from workers.models import AgentResult, AgentStatus

AGENT = "agent"
MERGER = "merger"
VALIDATOR = "validator"
PATTERN = "pattern"

#: One-letter outcome codes of agent samples (ok, invalid, error).
_CODES = {AgentStatus.OK: "o", AgentStatus.INVALID: "i", AgentStatus.ERROR: "e"}

Sample = tuple[str, str]  # (series, sample text)


def series(kind: str, name: str) -> str:
    """The series name of one agent/merger/validator/pattern, e.g. ``agent:researcher``."""
    return f"{kind}:{name}"


def agent_sample(env: AgentResult) -> Sample | None:
    """``"<run_s> <wait_s> <o|i|e>"`` for a subagent that did its work, else None.

    Cancelled and skipped subagents are left out: their run time says nothing about how long the
    agent takes.
    """
    code = _CODES.get(env.status)
    if code is None or env.started_at is None or env.finished_at is None:
        return None
    wait = env.started_at - env.queued_at if env.queued_at is not None else 0.0
    return series(AGENT, env.agent), f"{env.ran_s:.6f} {max(0.0, wait):.6f} {code}"


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
        )


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile of sorted values (q in 0..1)."""
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class AgentStats(BaseModel):
    """How long an agent runs and waits, and how often it succeeds."""

    name: str
    count: int = Field(description="Samples ever recorded (the summaries use the kept ones).")
    run: Summary
    wait: Summary
    ok_rate: float = Field(description="Fraction of kept samples whose output was valid.")


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


def _add_agent(snap: StatsSnapshot, name: str, count: str | None, texts: list[str]) -> None:
    rows: list[tuple[float, float, str]] = []
    for text in texts:
        parts = text.split()
        nums = _floats(" ".join(parts[:2]))
        if len(parts) == 3 and len(nums) == 2 and parts[2] in ("o", "i", "e"):
            rows.append((nums[0], nums[1], parts[2]))
    if not rows:
        return
    # Errors are often instant: time only the samples that did the work, if there are any.
    timed = [r for r in rows if r[2] != "e"] or rows
    run = Summary.of([r[0] for r in timed])
    wait = Summary.of([r[1] for r in rows])
    assert run is not None and wait is not None
    snap.agents[name] = AgentStats(
        name=name,
        count=int(count or len(rows)),
        run=run,
        wait=wait,
        ok_rate=sum(1 for r in rows if r[2] == "o") / len(rows),
    )


def _floats(text: str) -> list[float]:
    out = []
    for part in text.split():
        try:
            out.append(float(part))
        except ValueError:
            continue
    return out
