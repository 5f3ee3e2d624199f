"""The advisor's spend model: predicted tokens and dollars of a plan (pure).

Each subagent spends its agent's mean measured tokens (and dollars, when every sample of the
agent was priced). A spawn or a gather spends the sum, whether run in parallel or one by one.
A race spends its expected winner's tokens plus what its losers burn before they stop: a loser
still running when the winner finishes has burnt ``token rate x the time it ran`` by then, and
``token rate x stop latency`` more until it stops; one that ended first (not valid) spent all
of its tokens; one still queued spent nothing (it is skipped). The stop latency is the agent's
measured one (its subagents stopped while running), else another racer's, else
:data:`DEFAULT_STOP_S`. The one-at-a-time alternative of a race tries the racers in order until
one is valid, as the timing model does. Merger and validator spend is not learned (their samples
are durations only) and is not in the prediction.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from orchestrator.advisor.costmodel import Estimate
from workers.patterns import pattern_of
from workers.patterns.race import in_order
from workers.request import OrchestrationRequest
from workers.stats import StatsSnapshot

#: Stop latency assumed until one of the racers' agents has a measured one: the cancel poll
#: interval (``ORCH_CANCEL__POLL_S``'s default), within which a worker sees a stop request even
#: when pub/sub missed it. Measured stops are far shorter (p50 about 5 ms, bench/RESULTS.md), so
#: the default overstates a loser's burn, the safe side for a budget.
DEFAULT_STOP_S = 0.5
#: Winners a race's expectation follows, in order of predicted end; the probability left after
#: them is counted as "no racer valid" (every racer runs to its end): an upper bound, and with
#: any useful valid share a negligible one (0.7 ** 64 < 1e-9).
MAX_SCENARIOS = 64


@dataclass(frozen=True)
class RaceSplit:
    """Expected spend of a race, in one unit (tokens or dollars)."""

    winner: float
    losers: float
    #: Of the losers' burn, what they spend after the stop request (the stop latency's part).
    after_stop: float

    @property
    def total(self) -> float:
        """Everything the race spends."""
        return self.winner + self.losers


@dataclass
class Spend:
    """Predicted tokens and dollars of one plan; None where some agent has no token history."""

    #: Agents of the plan with no token history (no sample with usage).
    missing: list[str] = field(default_factory=list)
    #: Agents with token history whose dollars are unknown (some sample had no price).
    unpriced: list[str] = field(default_factory=list)
    mean_tokens: float | None = None
    tokens: float | None = None
    cost_usd: float | None = None
    #: The one-at-a-time alternative (a race: in order until one is valid).
    sequential_tokens: float | None = None
    sequential_cost_usd: float | None = None
    #: Race only: the expected split of ``tokens`` (and of ``cost_usd`` when priced).
    race_tokens: RaceSplit | None = None
    race_cost_usd: RaceSplit | None = None
    #: Race only: the racers' mean stop latency, and where it comes from ("measured": of some
    #: racer's agent, the others borrowing it; "assumed": :data:`DEFAULT_STOP_S`).
    stop_s: float | None = None
    stop_source: str = "assumed"


def spend(req: OrchestrationRequest, stats: StatsSnapshot, est: Estimate) -> Spend:
    """Predict what the plan spends; ``est`` is its timing (the race needs its schedule)."""
    agents = [t.agent for t in req.tasks]
    out = Spend()
    known = {a: s.tokens for a in set(agents) if (s := stats.agents.get(a)) and s.tokens}
    out.missing = sorted(set(agents) - set(known))
    if out.missing:
        return out
    tokens = [known[a].mean for a in agents]
    costs = [
        known[a].cost_usd_mean if known[a].priced == known[a].samples else None for a in agents
    ]
    out.unpriced = sorted({a for a, c in zip(agents, costs, strict=True) if c is None})
    out.mean_tokens = statistics.fmean(tokens)
    priced = [c for c in costs if c is not None] if not out.unpriced else None
    if not pattern_of(req.pattern).claims_win or len(est.starts) != len(agents):
        out.tokens = out.sequential_tokens = sum(tokens)
        if priced is not None:
            out.cost_usd = out.sequential_cost_usd = sum(priced)
        return out
    rates = [known[a].per_s for a in agents]
    stops, out.stop_source = _stops(agents, stats)
    out.stop_s = statistics.fmean(stops)
    ok = [stats.agents[a].ok_rate for a in agents]
    if not any(ok):
        ok = [1.0] * len(agents)  # as the timing model: history says nothing valid
    out.race_tokens = race_split(tokens, rates, est.starts, est.ends, ok, stops)
    out.tokens = out.race_tokens.total
    out.sequential_tokens = in_order(tokens, ok)
    if priced is not None:
        # Dollars burn at the token rate times each agent's dollars per token.
        usd_rates = [
            None if r is None else (r * c / t if t else 0.0)
            for r, c, t in zip(rates, priced, tokens, strict=True)
        ]
        out.race_cost_usd = race_split(priced, usd_rates, est.starts, est.ends, ok, stops)
        out.cost_usd = out.race_cost_usd.total
        out.sequential_cost_usd = in_order(priced, ok)
    return out


def race_split(
    amounts: Sequence[float],
    rates_per_s: Sequence[float | None],
    starts: Sequence[float],
    ends: Sequence[float],
    ok_rates: Sequence[float],
    stop_s: Sequence[float],
) -> RaceSplit:
    """Expected winner and loser spend of a race.

    In order of predicted end, racer k wins with probability ``ok_k x P(no earlier one was
    valid)``; given that, every other racer spends :func:`burn` up to k's end. With no valid
    racer every racer spends all of its amount (each is a loser).
    """
    order = sorted(range(len(amounts)), key=lambda i: (ends[i], i))
    p_none, winner, losers, after = 1.0, 0.0, 0.0, 0.0
    for k in order[:MAX_SCENARIOS]:
        p = ok_rates[k] * p_none
        p_none *= 1.0 - ok_rates[k]
        if p <= 0:
            continue
        winner += p * amounts[k]
        for j, amount in enumerate(amounts):
            if j != k:
                to_win, tail = burn(amount, rates_per_s[j], starts[j], ends[j], ends[k], stop_s[j])
                losers += p * (to_win + tail)
                after += p * tail
    losers += p_none * sum(amounts)
    return RaceSplit(winner=winner, losers=losers, after_stop=after)


def burn(
    amount: float,
    rate_per_s: float | None,
    start_s: float,
    end_s: float,
    won_s: float,
    stop_s: float,
) -> tuple[float, float]:
    """What a loser spends up to the win at ``won_s``, and after it until it stops."""
    if start_s >= won_s:
        return 0.0, 0.0  # still queued: skipped
    if end_s <= won_s or rate_per_s is None:
        # Ended before the win (not valid); or no rate known: assume it spent all of it.
        return amount, 0.0
    to_win = min(amount, rate_per_s * (won_s - start_s))
    # It would have ended anyway: never more than the rest of its own tokens.
    return to_win, min(amount - to_win, rate_per_s * stop_s)


def _stops(agents: Sequence[str], stats: StatsSnapshot) -> tuple[list[float], str]:
    """Each racer's stop latency (the mean: the expected burn), and where it comes from."""
    measured = {a: s.stop.mean_s for a in set(agents) if (s := stats.agents[a]).stop}
    if not measured:
        return [DEFAULT_STOP_S] * len(agents), "assumed"
    # An agent never stopped yet borrows the others' (stopping is the worker's doing, not the
    # agent's, as long as the agent awaits or checks ctx.cancelled()).
    fallback = statistics.median(measured.values())
    return [measured.get(a, fallback) for a in agents], "measured"
