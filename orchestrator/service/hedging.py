"""A hedged race's percentile, resolved at admission: ``race(..., hedge="p95")`` becomes
``hedge_after_s`` from the racers' measured run times (``workers/stats.py``), so the coordinator
and the workers only ever see seconds.

The delay is the largest percentile over the race's agents (a racer of a slower agent is not
hedged against too early). An agent with fewer than ``ORCH_ADVISOR__HEDGE_MIN_SAMPLES`` measured
runs has no percentile worth trusting: the request's own ``hedge_after_s`` is then the fallback,
and without one the request is refused, naming the agent and what to pass instead.
"""

from __future__ import annotations

from workers.errors import InvalidRequest
from workers.request import OrchestrationRequest
from workers.settings import Settings
from workers.stats import AGENT, Summary, series
from workers.store import RunStore

__all__ = ["percentile_s", "resolve_hedge"]


def percentile_s(summary: Summary, name: str) -> float:
    """The percentile ``name`` ("p50", "p90", "p95", "p99") of a duration summary."""
    value: float = getattr(summary, f"{name}_s")
    return value


def resolve_hedge(req: OrchestrationRequest, store: RunStore, settings: Settings) -> bool:
    """Set ``req.hedge_after_s`` to the measured percentile ``req.hedge`` names (True if the
    request changed; on the fallback ``hedge`` is dropped, so the record says which it was).
    InvalidRequest when there is too little history and no fallback."""
    if req.hedge is None:
        return False
    agents = sorted({t.agent for t in req.tasks})
    stats, _, _ = store.planning_facts([series(AGENT, a) for a in agents], [])
    need = settings.advisor.hedge_min_samples
    delays: list[float] = []
    for name in agents:
        known = stats.agents.get(name)
        if known is None or known.run.samples < need:
            if req.hedge_after_s is not None:
                req.hedge = None  # the fallback the caller gave
                return True
            have = known.run.samples if known is not None else 0
            raise InvalidRequest(
                f"hedge={req.hedge!r}: agent {name!r} has {have} measured runs, fewer than "
                f"ORCH_ADVISOR__HEDGE_MIN_SAMPLES={need}; pass hedge_after_s=<seconds> (alone, "
                "or with hedge as the fallback until there is history)"
            )
        delays.append(percentile_s(known.run, req.hedge))
    # A percentile of 0 (instant agents) would start every racer at once: no hedge at all.
    req.hedge_after_s = max(max(delays), 0.001)
    return True
