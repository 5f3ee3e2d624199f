"""Pre-flight in tokens and dollars: the learned spend, the substantial check, the predicted cost
and a race's loser burn, budgets, and the money rule of the verdict.

Most tests are pure (hand-made statistics, as in tests/test_advisor.py, so the numbers can be
worked out on paper); the last ones run ``spender`` subagents on the real test workers.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchestrator import (
    CheckStatus,
    Orchestrator,
    ParallelismDoesNotPay,
    Pattern,
    RunStatus,
    Task,
    Verdict,
    advise,
)
from orchestrator.advisor import apply_policy
from orchestrator.advisor.costmodel import FINALIZE_S
from orchestrator.advisor.spendmodel import DEFAULT_STOP_S
from tests.agents_advisor import Said, Words
from tests.conftest import queued, recorded_runs, wait_for
from tests.test_advisor import (
    ENTRIES,
    agent_stats,
    capacity,
    check,
    entry,
    naps,
    request,
    stats,
    summary,
)
from workers.models import AgentKind, AgentResult, AgentStatus, Prediction, Usage
from workers.prices import ModelPrice, Prices
from workers.settings import AdvisorSettings
from workers.stats import StatsSnapshot, TokenStats, agent_sample, snapshot

pytestmark = pytest.mark.filterwarnings("error")

RACERS = [entry(name, AgentKind.AGENT, Words, Said) for name in ("quick", "slow", "llm")]


def tokens(mean: float, per_s: float | None = None, cost_usd: float | None = None) -> TokenStats:
    """Token history of 5 samples, all priced when ``cost_usd`` is given."""
    priced = 5 if cost_usd is not None else 0
    return TokenStats(samples=5, mean=mean, per_s=per_s, priced=priced, cost_usd_mean=cost_usd)


def with_tokens(snap: StatsSnapshot, agent: str, t: TokenStats) -> StatsSnapshot:
    snap.agents[agent].tokens = t
    return snap


def racers(*agents: str) -> list[tuple[str, dict[str, Any]]]:
    return [(a, {"text": f"{a}-{i}"}) for i, a in enumerate(agents)]


def envelope(i: int, status: AgentStatus = AgentStatus.OK, **kw: Any) -> AgentResult:
    return AgentResult(
        index=i,
        task_id=f"r.{i}",
        agent="llm",
        status=status,
        queued_at=100.0,
        started_at=100.1,
        finished_at=101.1,
        **kw,
    )


# -- learning tokens like durations ------------------------------------------------------------
def test_samples_carry_tokens_and_dollars_and_old_ones_still_parse() -> None:
    priced = Usage(model="m", input_tokens=300, output_tokens=200, cost_usd=0.0125)
    partly = Usage(model="m", input_tokens=10, output_tokens=0, cost_usd=0.001, unpriced=["x"])
    assert agent_sample(envelope(0)) == ("agent:llm", "1.000000 0.100000 o")  # as before
    assert agent_sample(envelope(0, usage=priced)) == (
        "agent:llm",
        "1.000000 0.100000 o 500 0.0125",
    )
    # Partly priced is not a cost: "-", never a lower bound shown as the cost.
    assert agent_sample(envelope(0, usage=partly))[1].endswith(" 10 -")  # type: ignore[index]
    stopped = envelope(0, AgentStatus.CANCELLED, cancel_requested_at=101.08, usage=priced)
    assert agent_sample(stopped) == ("agent:llm", "1.000000 0.100000 c 0.020000 500 0.0125")
    assert agent_sample(envelope(0, AgentStatus.CANCELLED)) is None  # stop moment unknown

    texts = [
        "1.0 0.01 o",  # an older sample: no tokens known
        "2.0 0.01 o 6000 0.03",
        "1.0 0.01 i 3000 -",  # unpriced
        "0.5 0.01 c 0.04 700 0.002",  # stopped: not a run time, not a subagent's spend
        "0.5 0.01 c 0.06",
        "1.0 0.01 o 12x 0.1",  # malformed
        "1.0 0.01 c",  # malformed: a stop needs its latency
    ]
    snap = snapshot(["agent:llm"], [texts, ["9"]])
    llm = snap.agents["llm"]
    assert llm.count == 9 and llm.run.samples == 3 and llm.ok_rate == pytest.approx(2 / 3)
    assert llm.tokens is not None
    assert llm.tokens.samples == 2 and llm.tokens.mean == pytest.approx(4500)
    assert llm.tokens.per_s == pytest.approx(9000 / 3.0)  # tokens per second of run time
    assert llm.tokens.priced == 1 and llm.tokens.cost_usd_mean == pytest.approx(0.03)
    assert llm.stop is not None and llm.stop.samples == 2
    assert llm.stop.mean_s == pytest.approx(0.05)
    old = snapshot(["agent:nap"], [["0.3 0.01 o", "0.3 0.01 o"], ["2"]]).agents["nap"]
    assert old.tokens is None and old.stop is None  # no history: unknown, not zero


# -- substantial ---------------------------------------------------------------------------------
def test_a_plan_of_500_token_subagents_is_not_substantial() -> None:
    snap = with_tokens(stats(nap=0.3), "nap", tokens(500, 500 / 0.3))
    pf = advise(request(Pattern.SPAWN, naps(8)), ENTRIES, snap, capacity())
    status, reason = check(pf, "substantial")
    assert status is CheckStatus.WARN
    assert "a plan of 500-token subagents is not substantial: mean 500 tokens < 5000" in reason
    # A warning: the measured times still say it pays (tokens are a proxy for the work).
    assert pf.verdict is Verdict.PAYS
    assert f"substantial warn: {reason}" in pf.reasons()


def test_a_plan_of_8000_token_subagents_passes_and_the_threshold_is_a_setting() -> None:
    snap = with_tokens(stats(nap=0.3), "nap", tokens(8000, 8000 / 0.3))
    req = request(Pattern.SPAWN, naps(8))
    assert check(advise(req, ENTRIES, snap, capacity()), "substantial") == (
        CheckStatus.PASS,
        "mean 8,000 tokens per subagent >= 5000",
    )
    strict = AdvisorSettings(substantial_tokens=10_000)
    status, reason = check(advise(req, ENTRIES, snap, capacity(), strict), "substantial")
    assert status is CheckStatus.WARN and "mean 8,000 tokens < 10000" in reason


# -- predicting the cost -------------------------------------------------------------------------
def test_cost_prediction_from_a_price_table() -> None:
    """Envelopes priced by a table -> samples -> statistics -> the predicted tokens and dollars."""
    prices = Prices({"m": ModelPrice(input_per_mtok=3.0, output_per_mtok=15.0)})
    texts = []
    for i, (inp, out) in enumerate([(4000, 1000), (5000, 2000), (3000, 3000)]):
        usage = Usage(model="m", input_tokens=inp, output_tokens=out)
        usage.cost_usd = prices.cost_usd("m", inp, out)
        sample = agent_sample(envelope(i, usage=usage).model_copy(update={"agent": "nap"}))
        assert sample is not None
        texts.append(sample[1])
    snap = stats(nap=0.3)
    snap.agents["nap"].tokens = snapshot(["agent:nap"], [texts, ["3"]]).agents["nap"].tokens
    pf = advise(request(Pattern.SPAWN, naps(8)), ENTRIES, snap, capacity())
    # Per subagent: 6,000 tokens; (4000*3 + 1000*15 + 5000*3 + 2000*15 + 3000*3 + 3000*15)/3e6 $.
    per_usd = (12_000 + 15_000 + 15_000 + 30_000 + 9_000 + 45_000) / 3 / 1e6
    assert pf.tokens == 8 * 6000 and pf.sequential_tokens == 8 * 6000
    assert pf.cost_usd == pytest.approx(8 * per_usd)
    status, reason = check(pf, "spend")
    assert status is CheckStatus.PASS
    assert reason == f"predicted 48,000 tokens (${8 * per_usd:.4f}): the same one at a time"
    assert pf.loser_tokens is None  # not a race
    p = pf.prediction("warn")
    assert p.tokens == 48_000 and p.cost_usd == pytest.approx(8 * per_usd)
    assert Prediction.model_validate_json(p.model_dump_json()) == p


def test_unpriced_agents_have_tokens_but_no_dollars() -> None:
    snap = with_tokens(stats(nap=0.3), "nap", tokens(6000, 20_000))
    pf = advise(request(Pattern.SPAWN, naps(4)), ENTRIES, snap, capacity())
    assert pf.tokens == 24_000 and pf.cost_usd is None
    assert "dollars unknown: no price for agent(s) nap" in check(pf, "spend")[1]


def race_stats() -> StatsSnapshot:
    """slow: 2 s and 20,000 tokens (10,000 a second), its stops measured at 50 ms; quick: 0.2 s
    and 1,000 tokens; both always valid."""
    snap = stats(slow=2.0, quick=0.2)
    snap.agents["slow"].tokens = tokens(20_000, 10_000, cost_usd=0.2)
    snap.agents["slow"].stop = summary(0.05)
    snap.agents["quick"].tokens = tokens(1000, 5000, cost_usd=0.01)
    return snap


def test_race_loser_burn_up_to_the_winner_and_in_the_stop_latency() -> None:
    req = request(Pattern.RACE, racers("slow", "slow", "quick"), validate="said_good")
    pf = advise(req, RACERS + ENTRIES, race_stats(), capacity())
    # Racer i starts after the coordinator (10 ms), i+1 dispatches (1 ms each) and the start
    # latency (5 ms); quick (#2, started at 18 ms) wins at 218 ms.
    won_s = 0.218
    assert pf.parallel_s == pytest.approx(won_s + FINALIZE_S)
    ran_s = [won_s - 0.016, won_s - 0.017]  # each slow loser's run until the win
    to_win = sum(10_000 * r for r in ran_s)
    after_stop = 2 * 10_000 * 0.05  # token rate x measured stop latency
    assert pf.stop_s == pytest.approx(0.05)
    assert pf.loser_stop_tokens == round(after_stop)
    assert pf.loser_tokens == round(to_win + after_stop)
    assert pf.tokens == round(1000 + to_win + after_stop)
    assert pf.sequential_tokens == 20_000  # in order: the first slow one is valid
    # Dollars burn at each agent's dollars per token (slow: $0.2 for 20,000).
    assert pf.cost_usd == pytest.approx(0.01 + (to_win + after_stop) * 0.2 / 20_000)
    status, reason = check(pf, "spend")
    assert status is CheckStatus.PASS and "50 ms measured stop latency" in reason
    assert f"the losers ~{to_win + after_stop:,.0f} before they stop" in reason
    assert pf.verdict is Verdict.PAYS  # x9 the speed for x0.3 the dollars
    p = pf.prediction("warn")
    assert (p.loser_tokens, p.loser_stop_tokens) == (pf.loser_tokens, pf.loser_stop_tokens)


def test_stop_latency_defaults_when_never_measured_and_says_so() -> None:
    snap = race_stats()
    snap.agents["slow"].stop = None
    req = request(Pattern.RACE, racers("slow", "slow", "quick"), validate="said_good")
    pf = advise(req, RACERS + ENTRIES, snap, capacity())
    assert pf.stop_s == DEFAULT_STOP_S
    assert pf.loser_stop_tokens == round(2 * 10_000 * DEFAULT_STOP_S)
    assert f"{DEFAULT_STOP_S * 1000:.0f} ms assumed stop latency" in check(pf, "spend")[1]


def test_a_race_that_multiplies_its_spend_more_than_its_speed_is_marginal() -> None:
    """Four 1 s racers that succeed half the time: x1.84 the speed of trying them in order, but
    all four run to their end, x2.13 the tokens. Fast, and not worth the money."""
    snap = stats()
    snap.agents["llm"] = agent_stats("llm", 1.0, ok=0.5)
    req = request(Pattern.RACE, racers("llm", "llm", "llm", "llm"), validate="said_good")
    assert advise(req, RACERS + ENTRIES, snap, capacity()).verdict is Verdict.PAYS  # time only
    snap.agents["llm"].tokens = tokens(8000, 8000)
    pf = advise(req, RACERS + ENTRIES, snap, capacity())
    assert pf.speedup is not None and pf.speedup >= 1.5
    assert pf.sequential_tokens == 8000 * (1 + 0.5 + 0.25 + 0.125)
    assert pf.verdict is Verdict.MARGINAL
    status, reason = check(pf, "spend")
    assert status is CheckStatus.WARN and "x2.13 the tokens of trying the racers in order" in reason
    assert "multiplies its spend more than its speed" in reason
    # Racers that fail more often are worth racing: the same race with 25 % valid pays.
    snap.agents["llm"].ok_rate = 0.25
    assert advise(req, RACERS + ENTRIES, snap, capacity()).verdict is Verdict.PAYS


# -- budgets -------------------------------------------------------------------------------------
def test_a_budget_smaller_than_the_prediction_is_refused_and_warned() -> None:
    snap = with_tokens(stats(nap=0.3), "nap", tokens(500, 500 / 0.3, cost_usd=0.002))
    req = request(Pattern.SPAWN, naps(8), max_tokens=1000, preflight="refuse")
    pf = advise(req, ENTRIES, snap, capacity())
    status, reason = check(pf, "budget")
    assert status is CheckStatus.FAIL
    assert "budget max_tokens 1,000 is smaller than the predicted 4,000 tokens" in reason
    assert pf.verdict is Verdict.DOES_NOT_PAY
    with pytest.raises(ParallelismDoesNotPay, match="max_tokens 1,000 is smaller than the pre"):
        apply_policy(pf, req)
    warned = req.model_copy(update={"preflight": "warn"})
    fields, events = apply_policy(pf, warned)
    assert json.loads(fields["prediction"])["verdict"] == "does-not-pay"
    assert "budget fail" in events[0]["reasons"]
    dollars = request(Pattern.SPAWN, naps(8), max_cost_usd=0.01, preflight="refuse")
    with pytest.raises(ParallelismDoesNotPay, match=r"max_cost_usd \$0.0100 is smaller than the "):
        apply_policy(advise(dollars, ENTRIES, snap, capacity()), dollars)


def test_a_budget_that_fits_passes_and_one_too_close_warns() -> None:
    snap = with_tokens(stats(nap=0.3), "nap", tokens(500, 500 / 0.3))
    roomy = advise(request(Pattern.SPAWN, naps(8), max_tokens=10_000), ENTRIES, snap, capacity())
    assert check(roomy, "budget") == (
        CheckStatus.PASS,
        "budget max_tokens 10,000 fits the predicted 4,000 tokens",
    )
    close = advise(request(Pattern.SPAWN, naps(8), max_tokens=4500), ENTRIES, snap, capacity())
    status, reason = check(close, "budget")
    assert status is CheckStatus.WARN and "within 20% of the predicted 4,000 tokens" in reason
    assert close.verdict is Verdict.PAYS


# -- unknown without history ---------------------------------------------------------------------
def test_no_token_history_is_unknown_and_never_pretends() -> None:
    # No agent of the plan ever recorded usage: no token lines, no numbers, the time verdict.
    pf = advise(request(Pattern.SPAWN, naps(8)), ENTRIES, stats(nap=0.3), capacity())
    assert [c.name for c in pf.checks] == ["independence", "structure", "cost", "width", "race"]
    assert (pf.tokens, pf.cost_usd, pf.loser_tokens) == (None, None, None)
    assert pf.verdict is Verdict.PAYS and pf.prediction("warn").tokens is None
    # One agent with history, one without: the check says unknown, and names the one.
    snap = with_tokens(stats(nap=0.3, tiny=0.3), "nap", tokens(9000, 30_000))
    mixed = [*naps(4), *[("tiny", {"text": f"t{i}"}) for i in range(4)]]
    pf = advise(request(Pattern.SPAWN, mixed), ENTRIES, snap, capacity())
    status, reason = check(pf, "substantial")
    assert status is CheckStatus.WARN and "no token history for agent(s) tiny" in reason
    assert "unknown" in reason and pf.tokens is None
    # A budget that cannot be checked warns; refuse does not refuse on a guess.
    req = request(Pattern.SPAWN, naps(8), max_tokens=10, preflight="refuse")
    pf = advise(req, ENTRIES, stats(nap=0.3), capacity())
    status, reason = check(pf, "budget")
    assert status is CheckStatus.WARN and "max_tokens 10 cannot be checked" in reason
    assert pf.verdict is Verdict.PAYS
    apply_policy(pf, req)  # no ParallelismDoesNotPay


# -- on real workers -----------------------------------------------------------------------------
def spender(each: int, seconds: float, tag: int) -> Task:
    """A subagent that records ``each`` tokens over ``seconds``, for $0.001 in all."""
    return Task("spender", {"tokens": each, "seconds": seconds, "cost_usd": 0.001, "tag": tag})


def spenders(n: int, each: int, first_tag: int) -> list[Task]:
    return [spender(each, 0.05, tag) for tag in range(first_tag, first_tag + n)]


@pytest.mark.integration
def test_real_workers_learn_tokens_and_preflight_judges_them(
    orch: Orchestrator, idle_orch: Orchestrator
) -> None:
    for first in (0, 4):  # statistics from real subagents that recorded 500 tokens each
        assert orch.spawn(spenders(4, 500, first), preflight="off").wait(timeout_s=30).ok
    pf = orch.preflight("parallel-spawn", spenders(8, 500, 100))
    [sub] = [c for c in pf.checks if c.name == "substantial"]
    assert sub.status is CheckStatus.WARN
    assert "a plan of 500-token subagents is not substantial: mean 500 tokens < 5000" in sub.reason
    assert pf.tokens == 4000 and pf.cost_usd == pytest.approx(0.008)

    # The prediction is stored on the run record, and the report puts it beside the ledger.
    res = orch.spawn(spenders(4, 500, 200)).wait(timeout_s=30)
    assert res.ok and res.report.prediction is not None
    assert res.report.prediction.tokens == 2000 == res.report.tokens_spent
    assert json.loads(orch.store.record(res.run_id)["prediction"])["tokens"] == 2000

    runs = recorded_runs(idle_orch)
    with pytest.raises(ParallelismDoesNotPay, match="max_tokens 1,000 is smaller than the pre"):
        idle_orch.spawn(spenders(8, 500, 300), max_tokens=1000, preflight="refuse")
    assert queued(idle_orch) == 0 and recorded_runs(idle_orch) == runs


@pytest.mark.integration
def test_real_race_losers_teach_the_stop_latency(orch: Orchestrator) -> None:
    slow, quick = spender(500, 5.0, 1000), spender(500, 0.05, 1001)
    run = orch.race([slow, quick])
    res = run.settle(timeout_s=30)  # the stopped loser's envelope too
    assert res.status is RunStatus.SUCCEEDED and res.winner is not None
    assert res.winner.index == 1 and res.results[0].status is AgentStatus.CANCELLED

    def measured() -> Any:
        snap, _, _ = orch.store.planning_facts(["agent:spender"], [])
        return snap.agents["spender"].stop

    stop = wait_for(measured, 10, "the stopped racer's sample")
    assert 0 <= stop.mean_s < 3  # type: ignore[attr-defined]
    pf = orch.preflight("race-then-cancel", [slow, quick])
    [spend] = [c for c in pf.checks if c.name == "spend"]
    assert "measured stop latency" in spend.reason
    assert pf.loser_tokens is not None and pf.loser_stop_tokens is not None
