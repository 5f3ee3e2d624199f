"""The pre-flight advisor: does this plan pay in parallel? A pure function of the request, the
catalog entries, the measured duration statistics and the live worker capacity.

Reading those from Redis lives in :mod:`orchestrator.preflight`; this module only computes, so
every verdict can be reproduced in a unit test. The checks are in :mod:`orchestrator.checks`,
the timing model in :mod:`orchestrator.costmodel`.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.advisor import checks, spendchecks
from orchestrator.advisor.checks import Capacity, Check, CheckStatus, QueueCapacity
from orchestrator.advisor.costmodel import Estimate, estimate
from orchestrator.advisor.limitmodel import task_limits, task_tokens
from orchestrator.advisor.spendmodel import Spend, spend
from workers.models import AgentKind, CatalogEntry, Execution, Pattern, Prediction, Verdict
from workers.patterns import pattern_of
from workers.request import OrchestrationRequest
from workers.settings import AdvisorSettings
from workers.stats import StatsSnapshot

__all__ = ["Capacity", "Check", "CheckStatus", "Preflight", "QueueCapacity", "advise"]


class Preflight(BaseModel):
    """The answer to "should I spawn this?": a verdict, predicted numbers and the checks."""

    pattern: Pattern
    n: int
    verdict: Verdict
    sequential_s: float | None = Field(None, description="Doing the work one task at a time.")
    parallel_s: float | None = Field(None, description="Predicted wall time, submit to finish.")
    spawn_overhead_s: float | None = Field(None, description="Coordinator, dispatch, start.")
    merge_s: float | None = Field(None, description="Merge and its dispatch (gather only).")
    speedup: float | None = None
    cost_s: float | None = Field(None, description="Predicted worker-seconds spent.")
    slots: dict[str, int] = Field(default_factory=dict, description="Live slots per queue.")
    waves: int = Field(0, description="Rounds the busiest queue needs for its tasks.")
    batch_size: int | None = Field(
        None, description="Subagents per message chosen by adaptive batching, if any."
    )
    tokens: int | None = Field(None, description="Predicted tokens (None: no token history).")
    cost_usd: float | None = Field(None, description="Predicted dollars (None: unknown).")
    sequential_tokens: int | None = Field(None, description="Doing it one task at a time.")
    loser_tokens: int | None = Field(
        None, description="Race: what the losers burn before they stop."
    )
    loser_stop_tokens: int | None = Field(
        None, description="Race: of loser_tokens, spent after the stop request."
    )
    stop_s: float | None = Field(None, description="Race: the stop latency the losers' burn uses.")
    unlimited_parallel_s: float | None = Field(
        None,
        description="Under rate limits: the wall time the slots alone would allow "
        "(parallel_s is the limited one).",
    )
    limit_widths: dict[str, int] = Field(
        default_factory=dict,
        description="Per rate limit of the plan's agents: the concurrent calls it allows.",
    )
    checks: list[Check]

    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if c.status is CheckStatus.FAIL]

    def reasons(self) -> list[str]:
        """One line per check that warned or failed."""
        return [f"{c.name} {c.status.value}: {c.reason}" for c in self.checks if c.status != "pass"]

    def prediction(self, policy: str, execution: Execution = Execution.PARALLEL) -> Prediction:
        """The summary stored on the run record (and later shown beside the actual values)."""
        return Prediction(
            verdict=self.verdict,
            policy=policy,
            execution=execution,
            sequential_s=self.sequential_s,
            parallel_s=self.parallel_s,
            speedup=self.speedup,
            cost_s=self.cost_s,
            tokens=self.tokens,
            cost_usd=self.cost_usd,
            loser_tokens=self.loser_tokens,
            loser_stop_tokens=self.loser_stop_tokens,
            reasons=self.reasons(),
        )


def advise(
    req: OrchestrationRequest,
    entries: Sequence[CatalogEntry],
    stats: StatsSnapshot,
    capacity: Capacity,
    config: AdvisorSettings | None = None,
) -> Preflight:
    """Judge a request before anything runs.

    ``entries`` must hold the catalog entry of every agent in the request, and of its merger or
    validator when it names one (missing ones are reported as structure failures).
    """
    config = config or AdvisorSettings()
    catalog = {(e.kind, e.name): e for e in entries}
    queues = [_queue(catalog, t.agent) for t in req.tasks]
    slots = {q: capacity.slots(q) for q in set(queues)}
    size = suggest_batch(req, stats, slots, config)
    limits, tokens = task_limits(req, catalog), task_tokens(req, stats)
    planned = req.model_copy(update={"batch_size": size}) if size is not None else req
    est = estimate(planned, stats, slots, queues, limits, tokens)
    lines = [
        checks.independence(req),
        checks.structure(req, catalog),
        checks.cost(req, est, config),
        checks.width(req, capacity, queues, est, config),
        checks.race(req, stats, capacity, queues, est),
    ]
    if size is not None:
        lines.append(_batching(req, stats, size))
    sp = spend(req, stats, est)
    lines += spendchecks.spend_checks(req, stats, est, sp, config)
    verdict = spendchecks.temper(_verdict(lines, est, config), est, sp)
    return Preflight(
        pattern=req.pattern,
        n=len(req.tasks),
        verdict=verdict,
        sequential_s=est.sequential_s,
        parallel_s=est.parallel_s,
        spawn_overhead_s=est.spawn_overhead_s,
        merge_s=est.merge_s,
        speedup=est.speedup,
        cost_s=est.cost_s,
        slots={q: capacity.slots(q) for q in sorted(set(queues))},
        waves=est.waves,
        checks=lines,
        batch_size=size,
        unlimited_parallel_s=est.unlimited_parallel_s,
        limit_widths=est.limit_widths,
        **_spend_fields(sp),
    )


def suggest_batch(
    req: OrchestrationRequest,
    stats: StatsSnapshot,
    slots: Mapping[str, int],
    config: AdvisorSettings,
) -> int | None:
    """Subagents per message when measured durations say they are tiny, else None.

    Enough work per message to hide the per-message cost (``batch_target_s``), but never so
    few messages that live slots sit idle.
    """
    batches = pattern_of(req.pattern).batches
    if req.batch_size is not None or not batches or config.batch_below_s <= 0:
        return None
    agents = {t.agent for t in req.tasks}
    if any(a not in stats.agents for a in agents):
        return None
    mean_s = statistics.fmean(stats.agents[t.agent].run.mean_s for t in req.tasks)
    if mean_s >= config.batch_below_s:
        return None
    n = len(req.tasks)
    per_slot = -(-n // max(1, sum(slots.values())))
    size = min(per_slot, max(2, -(-config.batch_target_s // max(mean_s, 1e-5))))
    return int(size) if size >= 2 else None


def _batching(req: OrchestrationRequest, stats: StatsSnapshot, size: int) -> Check:
    mean_ms = 1000 * statistics.fmean(stats.agents[t.agent].run.mean_s for t in req.tasks)
    return Check(
        name="batching",
        status=CheckStatus.PASS,
        reason=f"subagents are tiny (~{mean_ms:.2f} ms each): packed {size} per message "
        f"({-(-len(req.tasks) // size)} messages), each keeping its own envelope",
    )


def _spend_fields(sp: Spend) -> dict[str, Any]:
    race = sp.race_tokens
    return {
        "tokens": _round(sp.tokens),
        "cost_usd": sp.cost_usd,
        "sequential_tokens": _round(sp.sequential_tokens),
        "loser_tokens": _round(race.losers) if race else None,
        "loser_stop_tokens": _round(race.after_stop) if race else None,
        "stop_s": sp.stop_s,
    }


def _round(tokens: float | None) -> int | None:
    return None if tokens is None else round(tokens)


def _queue(catalog: Mapping[tuple[AgentKind, str], CatalogEntry], agent: str) -> str:
    entry = catalog.get((AgentKind.AGENT, agent))
    return entry.queue if entry else "?"


def _verdict(checks: list[Check], est: Estimate, config: AdvisorSettings) -> Verdict:
    if any(c.status is CheckStatus.FAIL for c in checks):
        return Verdict.DOES_NOT_PAY
    if est.speedup is None:
        return Verdict.UNKNOWN
    if est.speedup >= config.pays_speedup:
        return Verdict.PAYS
    if est.speedup >= config.marginal_speedup:
        return Verdict.MARGINAL
    return Verdict.DOES_NOT_PAY
