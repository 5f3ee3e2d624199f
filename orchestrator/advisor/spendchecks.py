"""The pre-flight checks in tokens and dollars (substantial, budget, spend) and the rule that lets
money temper a verdict. Pure functions, used by :func:`orchestrator.advisor.advise`.

Each returns None when it has nothing to judge: a plan none of whose agents has token history
gets no token lines at all (its :class:`~orchestrator.advisor.Preflight` says ``tokens=None``),
so plans of agents that never call ``ctx.record_usage`` read exactly as before.
"""

from __future__ import annotations

from orchestrator.advisor.checks import Check, CheckStatus
from orchestrator.advisor.costmodel import Estimate
from orchestrator.advisor.spendmodel import Spend
from workers.models import Verdict
from workers.request import OrchestrationRequest
from workers.settings import AdvisorSettings
from workers.stats import StatsSnapshot

#: A budget below this multiple of the predicted spend is warned about: the prediction is a
#: mean, so a budget just above it is crossed by about every other run.
BUDGET_HEADROOM = 1.2


def _tokens(value: float) -> str:
    return f"{value:,.0f}"


def _usd(value: float) -> str:
    return f"${value:.4f}" if value < 100 else f"${value:,.2f}"


def _history_hint(agents: list[str]) -> str:
    return (
        f"no token history for agent(s) {', '.join(agents)}: run them once with "
        "ctx.record_usage (any pattern) so pre-flight can predict their spend"
    )


def spend_checks(
    req: OrchestrationRequest,
    stats: StatsSnapshot,
    est: Estimate,
    sp: Spend,
    config: AdvisorSettings,
) -> list[Check]:
    """The token lines of a pre-flight (none when no agent of the plan has token history and
    no budget is set)."""
    known = any((s := stats.agents.get(t.agent)) and s.tokens for t in req.tasks)
    lines = (substantial(sp, known, config), budget(req, sp), spend_check(est, sp))
    return [c for c in lines if c is not None]


def substantial(sp: Spend, known: bool, config: AdvisorSettings) -> Check | None:
    """Each subagent is substantial: mean tokens per subagent >= ``substantial_tokens``.

    A warning, never a failure: tokens are a proxy for work, and the cost check measures the
    work itself (a 500-token call to a slow model may run for seconds and parallelise well).
    Refusing what the measured times say pays would be wrong; saying that each subagent's
    fixed part (its prompt, its dispatch) is a large share of it is not. ``known``: some agent
    of the plan has token history (else no line).
    """
    if not known:
        return None
    if sp.missing or sp.mean_tokens is None:
        return Check(
            name="substantial",
            status=CheckStatus.WARN,
            reason=f"{_history_hint(sp.missing)}; substantial unknown",
        )
    mean, floor = sp.mean_tokens, config.substantial_tokens
    if mean < floor:
        return Check(
            name="substantial",
            status=CheckStatus.WARN,
            reason=f"a plan of {_tokens(mean)}-token subagents is not substantial: mean "
            f"{_tokens(mean)} tokens < {floor} (ORCH_ADVISOR__SUBSTANTIAL_TOKENS): each "
            "subagent's fixed part (prompt, dispatch) is a large share of it; fold several "
            "into one task",
        )
    return Check(
        name="substantial",
        status=CheckStatus.PASS,
        reason=f"mean {_tokens(mean)} tokens per subagent >= {floor}",
    )


def budget(req: OrchestrationRequest, sp: Spend) -> Check | None:
    """A budget smaller than the predicted spend fails (preflight='refuse' then refuses); one
    within :data:`BUDGET_HEADROOM` of it, or one that cannot be checked, warns."""
    lines: list[tuple[CheckStatus, str]] = []
    if req.max_tokens is not None:
        lines.append(_limit(f"max_tokens {_tokens(req.max_tokens)}", req.max_tokens, sp, False))
    if req.max_cost_usd is not None:
        lines.append(_limit(f"max_cost_usd {_usd(req.max_cost_usd)}", req.max_cost_usd, sp, True))
    if not lines:
        return None
    worst = max(
        (s for s, _ in lines), key=[CheckStatus.PASS, CheckStatus.WARN, CheckStatus.FAIL].index
    )
    reasons = [r for s, r in lines if s is not CheckStatus.PASS] or [r for _, r in lines]
    return Check(name="budget", status=worst, reason="; ".join(reasons))


def _limit(said: str, limit: float, sp: Spend, dollars: bool) -> tuple[CheckStatus, str]:
    predicted = sp.cost_usd if dollars else sp.tokens
    if predicted is None:
        why = (
            _history_hint(sp.missing)
            if sp.missing
            else f"agent(s) {', '.join(sp.unpriced)} have no price for every model they used "
            "(ORCH_PRICES)"
        )
        return CheckStatus.WARN, f"budget {said} cannot be checked: {why}"
    expected = "the predicted " + (_usd(predicted) if dollars else f"{_tokens(predicted)} tokens")
    if limit < predicted:
        return CheckStatus.FAIL, (
            f"budget {said} is smaller than {expected}: the run would be stopped "
            "budget_exceeded before it finishes; raise the budget or shrink the plan"
        )
    if limit < predicted * BUDGET_HEADROOM:
        return CheckStatus.WARN, (
            f"budget {said} is within {BUDGET_HEADROOM - 1:.0%} of {expected} (a mean): a run "
            "may well cross it"
        )
    return CheckStatus.PASS, f"budget {said} fits {expected}"


def spend_ratio(sp: Spend) -> float | None:
    """What the plan spends over what doing it one at a time spends: in dollars when every
    agent is priced, else in tokens (None: unknown, or nothing spent either way)."""
    if sp.cost_usd is not None and sp.sequential_cost_usd:
        return sp.cost_usd / sp.sequential_cost_usd
    if sp.tokens is not None and sp.sequential_tokens:
        return sp.tokens / sp.sequential_tokens
    return None


def temper(verdict: Verdict, est: Estimate, sp: Spend) -> Verdict:
    """Money against time: a plan that multiplies its spend more than it multiplies its speed
    is at most 'marginal'.

    The rule: with ``spend_ratio`` = predicted spend / the one-at-a-time alternative's (dollars
    when every agent is priced, else tokens) and ``speedup`` = that alternative's time / the
    predicted wall time, a 'pays' verdict becomes 'marginal' when ``spend_ratio > speedup``:
    each x of speed must not cost more than an x of money. A spawn or gather spends the same
    either way (ratio 1), so only a race is tempered: racers that mostly succeed burn losers'
    tokens for little time saved; racers that often fail are worth racing. Money never makes
    a plan 'does-not-pay' (a budget does, :func:`budget`), and without token history the
    verdict is the time verdict.
    """
    ratio = spend_ratio(sp)
    if verdict is not Verdict.PAYS or ratio is None or est.speedup is None:
        return verdict
    return Verdict.MARGINAL if ratio > est.speedup else verdict


def spend_check(est: Estimate, sp: Spend) -> Check | None:
    """The predicted spend, and for a race its losers' burn and whether it tempers the verdict
    (:func:`temper`)."""
    if sp.tokens is None:
        return None
    total = f"predicted {_tokens(sp.tokens)} tokens"
    if sp.cost_usd is not None:
        total += f" ({_usd(sp.cost_usd)})"
    elif sp.unpriced:
        total += f" (dollars unknown: no price for agent(s) {', '.join(sp.unpriced)})"
    race = sp.race_tokens
    if race is None or sp.stop_s is None:
        return Check(
            name="spend", status=CheckStatus.PASS, reason=f"{total}: the same one at a time"
        )
    stop = f"{sp.stop_s * 1000:.0f} ms {sp.stop_source} stop latency"
    burn = (
        f"{total}: the winner ~{_tokens(race.winner)}, the losers ~{_tokens(race.losers)} "
        f"before they stop ({_tokens(race.losers - race.after_stop)} up to the winner's finish, "
        f"{_tokens(race.after_stop)} in the {stop})"
    )
    ratio = spend_ratio(sp)
    if ratio is None or est.speedup is None:
        return Check(name="spend", status=CheckStatus.PASS, reason=burn)
    unit = "dollars" if sp.cost_usd is not None and sp.sequential_cost_usd else "tokens"
    trade = (
        f"x{ratio:.2f} the {unit} of trying the racers in order, for x{est.speedup:.2f} the speed"
    )
    if ratio > est.speedup:
        return Check(
            name="spend",
            status=CheckStatus.WARN,
            reason=f"{burn}; {trade}: the race multiplies its spend more than its speed (so it "
            "is at most marginal); race fewer, or approaches that fail more often",
        )
    return Check(name="spend", status=CheckStatus.PASS, reason=f"{burn}; {trade}")
