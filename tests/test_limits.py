"""The rest of the fleet-wide limits (test_ratelimit.py has the basics): a call under its
model's and a named key's limits at once, an agent's own limit and retry policy, lease renewal
and a dead holder's lease, sync agents, retries stopped by the run's budget, pre-flight's
prediction under a limit, and the report and watch showing it all. Two real worker processes
against the loopback model server enforcing the provider's limit itself."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrator import AgentStatus, EmbeddedStack, Orchestrator, RunStatus, Task
from orchestrator.cli.report import report_lines
from orchestrator.cli.watch import RunView
from orchestrator.events import read_events
from tests.conftest import client_for, llm_stack_for, wait_for
from tests.model_server import ModelServer
from workers.errors import ConfigError
from workers.models import AgentKind
from workers.ratelimit import RateLimit, parse_rate_limits
from workers.store import store_at
from workers.store.limits import Quota, SyncLimits

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
#: The provider's window (the server's) and ours, 50 % wider: a request may reach the server
#: well after its grant on a loaded machine, and must still not fall into a full window there.
SERVER_WINDOW_S, OUR_WINDOW_S = 2.0, 3.0
LIMITS = {
    "lim-m": {"requests_per_minute": 200, "window_s": OUR_WINDOW_S},  # 10 in any 3 s
    "lim-a": {"requests_per_minute": 60, "window_s": OUR_WINDOW_S},  # 3
    "key:team-a": {"requests_per_minute": 180, "window_s": OUR_WINDOW_S},  # 9
    "key:slow": {"requests_per_minute": 1},
    "lim-conc": {"concurrent": 1, "lease_s": 1.0},
}


@pytest.fixture(scope="module")
def stack(model: ModelServer) -> Iterator[EmbeddedStack]:
    yield from llm_stack_for(model, "limits", ["tests.agents_limited"], LIMITS)


@pytest.fixture(scope="module")
def o(stack: EmbeddedStack) -> Iterator[Orchestrator]:
    yield from client_for(stack)


def _ask(agent: str = "lim.ask", tokens: int = 3, **payload: str) -> tuple[Task, str]:
    stream_id = uuid.uuid4().hex
    prompt = f"answer [[tokens={tokens} interval_ms=5 id={stream_id}]]"
    return Task(agent, {"prompt": prompt, **payload}), stream_id


def _most_in_a_window(times: list[float], window_s: float) -> int:
    return max((sum(1 for u in times if t <= u < t + window_s) for t in times), default=0)


def _limited(model: ModelServer, requests: int) -> None:
    model.limit(requests, SERVER_WINDOW_S)


# -- settings and declarations ------------------------------------------------------------------


def test_a_call_is_under_its_models_its_keys_and_its_agents_limits() -> None:
    table = parse_rate_limits(json.dumps(LIMITS))
    own = RateLimit(requests_per_minute=5)
    found = table.for_call(model="lim-a", key="team-a", agent="x", own=own)
    assert [name for name, _ in found] == ["agent:x", "key:team-a", "lim-a"]
    assert table.for_call(model="unlisted", key=None) == []  # a model with no limit: none
    with pytest.raises(ConfigError) as caught:
        table.for_call(model="lim-a", key="team-b")  # a mistyped key is not "unlimited"
    assert caught.value.setting == "ORCH_RATE_LIMITS" and "key:team-b" in str(caught.value)
    with pytest.raises(ConfigError):
        table.for_call(model=None, key=None, agent="x", own="nope")


def test_the_catalog_publishes_an_agents_model_and_limits(o: Orchestrator) -> None:
    entry = o.catalog.get(AgentKind.AGENT, "lim.ask")
    assert entry.model == "lim-m"
    assert entry.rate_limits == {"lim-m": {**LIMITS["lim-m"], "lease_s": 60.0}}
    own = o.catalog.get(AgentKind.AGENT, "lim.own")
    assert own.model is None
    assert list(own.rate_limits) == ["agent:lim.own"]


# -- limits together ----------------------------------------------------------------------------


def test_a_model_limit_and_a_key_limit_hold_together(o: Orchestrator, model: ModelServer) -> None:
    _limited(model, 9)  # the provider limits the key: 9 per 2 s, whatever the model
    try:
        asks = [_ask(model="lim-a" if i % 2 else "lim-b", key="team-a") for i in range(18)]
        res = o.spawn([t for t, _ in asks], deadline_s=90).wait(timeout_s=90)
        admitted, refused = model.admitted_at(), model.refused_by_limit
    finally:
        model.limit(None)
    assert res.status is RunStatus.SUCCEEDED, res.error
    # lim-b has no limit of its own: only the key's kept its calls from the provider's 429s.
    assert refused == 0 and len(admitted) == 18
    assert _most_in_a_window(admitted, SERVER_WINDOW_S) <= 9
    # lim-a's 9 calls at 3 a window need three windows; the key alone lets all 18 in two.
    a_ids = {sid for _, sid in asks[1::2]}
    a_arrivals = [r.started_at for r in model.records() if r.id in a_ids]
    a_started = [e.started_at for e in res.results if e.index % 2 and e.started_at]
    assert len(a_arrivals) == 9 and len(a_started) == 9
    assert max(a_arrivals) - min(a_started) >= 2 * OUR_WINDOW_S - 0.1
    assert len({e.worker for e in res.results}) == 2
    events = [e for e in read_events(o.store, res.run_id) if e.type == "throttled"]
    assert {e.limit for e in events} == {"key:team-a+lim-a", "key:team-a"}


def test_an_agents_own_limit_and_retry_policy(o: Orchestrator, model: ModelServer) -> None:
    _limited(model, 6)
    try:
        res = o.spawn([_ask("lim.own")[0] for _ in range(14)], deadline_s=90).wait(timeout_s=90)
        refused = model.refused_by_limit
    finally:
        model.limit(None)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert refused == 0 and sum(e.throttled_s > 0 for e in res.results) >= 6
    model.fail_next(5, 503)
    try:
        task, sid = _ask("lim.own")
        failed = o.spawn([task], deadline_s=30).wait(timeout_s=30).results[0]
    finally:
        model.clear_failures()
    assert failed.status is AgentStatus.ERROR and failed.error is not None
    assert failed.error.type == "ModelCallFailed" and failed.retries == 1  # attempts=2
    assert [r.status for r in model.records() if r.id == sid] == [503, 503]


# -- leases -------------------------------------------------------------------------------------


def test_a_long_call_keeps_its_concurrency_slot_beyond_lease_s(
    o: Orchestrator, model: ModelServer
) -> None:
    # Each call streams ~2.4 s under one slot whose lease lives 1 s unless renewed.
    asks = [_ask(model="lim-conc", tokens=30) for _ in range(2)]
    for task, _ in asks:
        task.payload["prompt"] = task.payload["prompt"].replace("interval_ms=5", "interval_ms=80")
    res = o.spawn([t for t, _ in asks], deadline_s=60).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    ids = {sid for _, sid in asks}
    first, second = sorted((r for r in model.records() if r.id in ids), key=lambda r: r.started_at)
    assert first.ended_at is not None and first.ended_at - first.started_at > 2.0
    assert second.started_at >= first.ended_at - 0.05, "the second call got the slot early"
    assert max(e.throttled_s for e in res.results) > 1.5


HOLDER = """
import sys, threading
from workers.limiter import LeaseKeeper
from workers.store import store_at
from workers.store.limits import Quota, SyncLimits
limits = SyncLimits(store_at(sys.argv[1], sys.argv[2]))
held = [(sys.argv[3], Quota(window_ms=1000, concurrent=1, lease_ms=600))]
assert limits.acquire("holder", held, 0) == 0
LeaseKeeper(lambda: limits).keep("holder", held)
print("held", flush=True)
threading.Event().wait(120)  # held (and renewed) until the test kills this process
"""


def test_a_dead_holders_lease_expires_a_live_ones_does_not(stack: EmbeddedStack) -> None:
    name = uuid.uuid4().hex
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, stack.url, stack.key_prefix, name],
        stdout=subprocess.PIPE,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )
    store = store_at(stack.url, stack.key_prefix)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        limits = SyncLimits(store)
        slot = [(name, Quota(window_ms=1000, concurrent=1, lease_ms=600))]
        until = time.monotonic() + 2.0  # over three lease lives: kept by its renewals

        def still_held() -> bool:
            assert limits.acquire("other", slot, 0) > 0, "a renewed lease expired"
            return time.monotonic() > until

        wait_for(still_held, 5, "three lease lives")
        proc.kill()
        proc.wait(timeout=5)
        wait_for(lambda: limits.acquire("other", slot, 0) == 0, 3, "the dead holder's lease")
    finally:
        proc.kill()
        proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        store.close()


# -- sync agents --------------------------------------------------------------------------------


def test_sync_agents_wait_their_turn(o: Orchestrator, model: ModelServer) -> None:
    _limited(model, 10)
    try:
        res = o.spawn([_ask("lim.sync")[0] for _ in range(14)], deadline_s=90).wait(timeout_s=90)
        admitted, refused = model.admitted_at(), model.refused_by_limit
    finally:
        model.limit(None)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert refused == 0 and len(admitted) == 14
    assert _most_in_a_window(admitted, SERVER_WINDOW_S) <= 10
    assert any(e.throttled_s > 0 for e in res.results)
    assert len({e.worker for e in res.results}) == 2


def test_a_cancel_wakes_a_sync_agent_waiting_for_its_turn(o: Orchestrator) -> None:
    first, _ = _ask("lim.sync", key="slow")
    assert o.spawn([first], deadline_s=60).wait(timeout_s=60).status is RunStatus.SUCCEEDED
    task, _ = _ask("lim.sync", key="slow")  # one a minute: this one waits
    run = o.spawn([task], deadline_s=120)
    wait_for(lambda: o.store.events_after(run.id) and _started(o, run.id), 10, "the start")
    began = time.monotonic()
    wait_for(lambda: time.monotonic() - began > 0.3, 2)  # well into its wait
    run.cancel()
    res = run.settle(timeout_s=10)
    env = res.results[0]
    assert env.status is AgentStatus.CANCELLED, env
    assert env.cancel_requested_at is not None and env.finished_at is not None
    assert env.finished_at - env.cancel_requested_at < 1.0
    assert env.throttled_s > 0.2


def _started(o: Orchestrator, run_id: str) -> bool:
    return any(f.get("type") == "started" for _, f in o.store.events_after(run_id))


# -- budget -------------------------------------------------------------------------------------


def test_retries_stop_at_the_runs_budget(o: Orchestrator) -> None:
    task = Task("lim.spender", {"tokens_per_attempt": 400})
    res = o.spawn([task], deadline_s=60, max_tokens=1000).wait(timeout_s=60)
    env = res.results[0]
    assert res.status is RunStatus.BUDGET_EXCEEDED, res.error
    assert env.status is AgentStatus.CANCELLED, env  # stopped by the budget, not failed
    assert env.retries == 2  # 400, 800: retried; 1200 crossed 1000: no third retry
    assert env.usage is not None and env.usage.input_tokens == 1200
    assert res.report.tokens_spent == 1200 and res.report.retries == 2


# -- pre-flight and what the report shows -------------------------------------------------------


def test_preflight_predicts_the_time_the_limit_allows(o: Orchestrator, model: ModelServer) -> None:
    warm = o.spawn([_ask("lim.plan")[0] for _ in range(4)], deadline_s=60).wait(timeout_s=60)
    assert warm.status is RunStatus.SUCCEEDED
    tasks = [_ask("lim.plan")[0] for _ in range(30)]
    pf = o.preflight("parallel-spawn", tasks)
    assert pf.parallel_s is not None and pf.unlimited_parallel_s is not None
    assert pf.limit_widths.keys() == {"lim-m"}
    assert pf.parallel_s > 2 * OUR_WINDOW_S > pf.unlimited_parallel_s  # 30 at 10 a window
    width = next(c for c in pf.checks if c.name == "width")
    assert width.status.value == "warn" and "allows ~" in width.reason, width
    _limited(model, 10)
    try:
        res = o.spawn(tasks, deadline_s=90).wait(timeout_s=90)
        refused = model.refused_by_limit
    finally:
        model.limit(None)
    assert res.status is RunStatus.SUCCEEDED and refused == 0
    ratio = res.report.wall_s / pf.parallel_s
    assert 0.6 < ratio < 1.6, (res.report.wall_s, pf.parallel_s)
    stored = res.report.prediction  # the submit's own pre-flight, beside the result
    assert stored is not None and stored.parallel_s is not None
    assert 0.6 < res.report.wall_s / stored.parallel_s < 1.6
    r = res.report
    assert r.throttled_s == pytest.approx(sum(e.throttled_s for e in res.results))
    assert r.throttled_s > 0 and r.throttled_mean_s == pytest.approx(r.throttled_s / 30)
    table = "\n".join(report_lines(res))
    assert "throttled total/mean" in table and "retries" in table
    view = RunView.from_record(o.store.record(res.run_id))
    for ev in read_events(o.store, res.run_id):
        view.apply(ev)
    line = view.limits_line()
    assert line is not None and "throttled" in line
    assert sum(s.throttled_s for s in view.subtasks) == pytest.approx(r.throttled_s, rel=0.01)
