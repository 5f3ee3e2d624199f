"""The token and dollar ledger on real workers: usage per subagent in its envelope, the run's
sums (spent and wasted), prices and unpriced models, and budgets that stop a run within their
bound."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from orchestrator import AgentStatus, EmbeddedStack, Orchestrator, RunStatus, Task
from orchestrator.cli.report import report_lines, roi_summary
from tests.conftest import AGENT_MODULES, client_for, stack_for
from workers.errors import ConfigError
from workers.prices import parse_prices

pytestmark = pytest.mark.integration

PRICES = {"m-priced": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
FLUSH_S = 0.1


def _cost(input_tokens: int, output_tokens: int) -> float:
    return (input_tokens * 1.0 + output_tokens * 2.0) / 1e6


@pytest.fixture(scope="module")
def ledger_stack() -> Iterator[EmbeddedStack]:
    """One worker process of two prefork slots (sync spenders queue behind them) and its
    event loop (async spenders, ten at once)."""
    yield from stack_for(
        name="ledger",
        workers=1,
        concurrency=2,
        agent_modules=[*AGENT_MODULES, "tests.agents_ledger"],
        extra_env={
            "ORCH_PRICES": json.dumps(PRICES),
            "ORCH_LEDGER__FLUSH_S": str(FLUSH_S),
            "ORCH_AIO__MAX_IN_FLIGHT": "10",
        },
    )


@pytest.fixture(scope="module")
def o(ledger_stack: EmbeddedStack) -> Iterator[Orchestrator]:
    yield from client_for(ledger_stack)


def _spend(agent: str = "ledger.spend_async", **payload: object) -> Task:
    return Task(agent, {"output_tokens": 100, "input_tokens": 50, **payload})


@pytest.mark.parametrize("agent", ["ledger.spend_async", "ledger.spend_sync"])
def test_usage_recorded_equals_usage_spent(o: Orchestrator, agent: str) -> None:
    res = o.spawn([_spend(agent) for _ in range(4)], deadline_s=60).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    for env in res.results:
        assert env.usage is not None
        assert (env.usage.input_tokens, env.usage.output_tokens) == (50, 100)
        assert env.usage.model == "m-priced"
        assert env.usage.cost_usd == pytest.approx(_cost(50, 100))
    report = res.report
    assert report.tokens_spent == 4 * 150
    assert (report.input_tokens_spent, report.output_tokens_spent) == (200, 400)
    assert report.tokens_wasted == 0
    assert report.cost_usd_spent == pytest.approx(4 * _cost(50, 100))
    assert report.cost_usd_per_useful_result == pytest.approx(_cost(50, 100))
    assert report.unpriced_models == []


def test_an_unknown_model_keeps_its_tokens_and_has_no_cost(o: Orchestrator) -> None:
    res = o.spawn([_spend(model="m-secret-sauce")], deadline_s=60).wait(timeout_s=60)
    env = res.results[0]
    assert env.usage is not None and env.usage.output_tokens == 100
    assert env.usage.cost_usd is None and env.usage.unpriced == ["m-secret-sauce"]
    assert res.report.tokens_spent == 150
    assert res.report.cost_usd_spent is None  # never a guessed price
    assert res.report.unpriced_models == ["m-secret-sauce"]
    table = "\n".join(report_lines(res))
    assert "no price for model(s) m-secret-sauce" in table


def test_failed_subagents_spend_is_counted_and_wasted(o: Orchestrator) -> None:
    res = o.spawn([_spend(), _spend(fail=True)], deadline_s=60).wait(timeout_s=60)
    assert res.status is RunStatus.FAILED
    assert res.results[1].status is AgentStatus.ERROR
    assert res.results[1].usage is not None and res.results[1].usage.output_tokens == 100
    assert res.report.tokens_spent == 300
    assert res.report.tokens_wasted == 150
    assert res.report.cost_usd_wasted == pytest.approx(_cost(50, 100))


def test_a_race_reports_its_losers_waste_in_dollars(o: Orchestrator) -> None:
    fast = _spend(output_tokens=20, per_chunk=10, interval_ms=50)
    slow = [_spend(output_tokens=5000, per_chunk=10, interval_ms=10) for _ in range(3)]
    run = o.race([fast, *slow], validate="ledger.any", deadline_s=60)
    run.wait(timeout_s=60)
    res = run.settle(timeout_s=20)  # the losers' own envelopes: their real spend
    assert res.winner is not None and res.winner.index == 0
    losers = res.results[1:]
    assert {e.status for e in losers} <= {AgentStatus.CANCELLED, AgentStatus.SKIPPED}
    assert any(e.status is AgentStatus.CANCELLED for e in losers)
    burnt = sum(e.usage.total_tokens for e in losers if e.usage)
    assert 0 < burnt < 3 * 5050  # stopped part way
    assert res.report.tokens_spent == 70 + burnt  # the winner's 50 in, 20 out
    assert res.report.tokens_wasted == burnt
    assert res.report.cost_usd_wasted is not None and res.report.cost_usd_wasted > 0
    assert res.report.cost_usd_per_useful_result == pytest.approx(res.report.cost_usd_spent)
    table = "\n".join(report_lines(res))
    assert "tokens wasted" in table and "cost wasted" in table
    assert "tokens ($" in roi_summary(res.report)


@pytest.mark.parametrize("agent, in_flight", [("ledger.spend_sync", 2), ("ledger.spend_async", 10)])
def test_a_token_budget_stops_a_spawn_within_its_bound(
    o: Orchestrator, agent: str, in_flight: int
) -> None:
    """40 subagents of 1000 tokens each (100 tokens every 50 ms: 2000 tokens/s), a budget of
    5000: the run stops budget_exceeded, no subagent starts after the crossing, and the
    overshoot is at most what those in flight spend in a flush interval plus their stop."""
    tasks = [
        _spend(agent, output_tokens=1000, input_tokens=0, per_chunk=100, interval_ms=50)
        for _ in range(40)
    ]
    run = o.spawn(tasks, deadline_s=120, max_tokens=5000)
    run.wait(timeout_s=120)
    live = run.status()
    assert live.max_tokens == 5000 and live.tokens_spent > 5000
    res = run.settle(timeout_s=30)
    assert res.status is RunStatus.BUDGET_EXCEEDED, res.error
    assert res.error is not None and "max_tokens=5,000" in res.error
    crossed_at = float(o.store.record(run.id)["budget_crossed_at"])
    late = [e.index for e in res.results if e.started_at is not None and e.started_at > crossed_at]
    assert late == [], f"started after the budget was crossed: {late}"
    assert any(e.status is AgentStatus.SKIPPED for e in res.results)
    report = res.report
    assert report.max_tokens == 5000 and report.tokens_spent > 5000
    rate = 100 / 0.05  # tokens per second per subagent
    bound = in_flight * (rate * (FLUSH_S + 0.25) + 100)  # a flush, the stop, one chunk
    assert report.budget_overshoot_tokens is not None
    assert report.budget_overshoot_tokens <= bound, (report.budget_overshoot_tokens, bound)
    events = [f.get("type") for _, f in o.store.events_after(run.id)]
    assert "budget_exceeded" in events


def test_a_gather_over_budget_merges_what_finished_when_its_quorum_is_met(
    o: Orchestrator,
) -> None:
    cheap = [_spend(output_tokens=10) for _ in range(3)]
    costly = [_spend(output_tokens=100_000, per_chunk=1000, interval_ms=20) for _ in range(2)]
    res = o.gather(
        [*cheap, *costly], merge="ledger.total", quorum=3, deadline_s=60, max_tokens=20_000
    ).wait(timeout_s=60)
    assert res.status is RunStatus.BUDGET_EXCEEDED, res.error
    assert res.merged == {"output_tokens": 30, "parts": 3}
    assert res.report.tokens_spent >= 20_000 + 110  # the merger's own spend is in the ledger


def test_a_gather_over_budget_without_its_quorum_fails_naming_the_budget(
    o: Orchestrator,
) -> None:
    costly = [_spend(output_tokens=100_000, per_chunk=1000, interval_ms=20) for _ in range(3)]
    res = o.gather(costly, merge="ledger.total", deadline_s=60, max_tokens=10_000).wait(
        timeout_s=60
    )
    assert res.status is RunStatus.BUDGET_EXCEEDED
    assert res.merged is None
    assert res.error is not None and "budget exceeded" in res.error


def test_a_dollar_budget_stops_a_run(o: Orchestrator) -> None:
    tasks = [_spend(output_tokens=100_000, per_chunk=1000, interval_ms=20) for _ in range(4)]
    res = o.spawn(tasks, deadline_s=60, max_cost_usd=0.05).wait(timeout_s=60)
    assert res.status is RunStatus.BUDGET_EXCEEDED
    assert res.error is not None and "max_cost_usd=0.05" in res.error


def test_prices_parse_inline_or_from_a_file_and_refuse_nonsense(tmp_path: object) -> None:
    inline = parse_prices(json.dumps(PRICES))
    assert inline.cost_usd("m-priced", 1_000_000, 0) == pytest.approx(1.0)
    assert inline.cost_usd("other", 10, 10) is None
    path = __import__("pathlib").Path(str(tmp_path)) / "prices.json"
    path.write_text(json.dumps(PRICES))
    assert parse_prices(str(path)).cost_usd("m-priced", 0, 1_000_000) == pytest.approx(2.0)
    for bad in ("{not json", '{"m": {"input_per_mtok": -1, "output_per_mtok": 1}}', "[1]"):
        with pytest.raises(ConfigError) as err:
            parse_prices(bad)
        assert err.value.setting == "ORCH_PRICES"
    with pytest.raises(ConfigError, match="cannot be read"):
        parse_prices(str(path) + ".missing")
