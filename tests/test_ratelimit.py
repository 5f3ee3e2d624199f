"""Fleet-wide rate limits and retries, on two real worker processes against the loopback model
server enforcing a provider's limit itself (it counts what it admits and what it refuses)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator

import pytest

from orchestrator import AgentStatus, EmbeddedStack, Orchestrator, Run, RunResult, RunStatus, Task
from tests.conftest import client_for, llm_stack_for, wait_for
from tests.model_server import ModelServer
from workers.errors import ConfigError
from workers.ratelimit import RateLimit, parse_rate_limits
from workers.store import close_async, multiplexer
from workers.store.limits import AsyncLimits, Quota

pytestmark = pytest.mark.integration

#: The provider's limit (the server's) and ours: the same 10 requests, over a window 50 %
#: wider, so that the time between our grant and the request's arrival (a loaded machine
#: delays it by tenths of a second) cannot push an 11th into one of the server's windows.
SERVER_REQUESTS, SERVER_WINDOW_S, OUR_WINDOW_S = 10, 2.0, 3.0
LIMITS = {
    "m": {"requests_per_minute": 200, "window_s": OUR_WINDOW_S},
    "slow": {"requests_per_minute": 1},
}


@pytest.fixture(scope="module")
def stack(model: ModelServer) -> Iterator[EmbeddedStack]:
    yield from llm_stack_for(model, "ratelimit", ["tests.agents_llm"], LIMITS)


@pytest.fixture(scope="module")
def o(stack: EmbeddedStack) -> Iterator[Orchestrator]:
    yield from client_for(stack)


def _ask(model: str = "m", tokens: int = 3) -> tuple[Task, str]:
    stream_id = uuid.uuid4().hex
    prompt = f"answer [[tokens={tokens} interval_ms=5 id={stream_id}]]"
    return Task("llm.ask", {"prompt": prompt, "model": model}), stream_id


def _events(o: Orchestrator, run_id: str, kind: str) -> list[dict[str, str]]:
    return [f for _, f in o.store.events_after(run_id) if f.get("type") == kind]


def _most_in_a_window(times: list[float], window_s: float) -> int:
    return max((sum(1 for u in times if t <= u < t + window_s) for t in times), default=0)


# -- settings ---------------------------------------------------------------------------------


def test_limits_scale_to_their_window_and_nonsense_is_refused() -> None:
    limits = parse_rate_limits(json.dumps(LIMITS))
    quota = limits.get("m")
    assert quota is not None and quota.quota().requests == 10
    assert quota.quota().window_ms == 3000
    assert RateLimit(input_tokens_per_minute=600, window_s=1).quota().input_tokens == 10
    assert limits.get("unlisted") is None
    for bad in ('{"m": {"rpm": 5}}', '{"m": {"concurrent": 0}}', "[1]", "{nope", "/no/such"):
        with pytest.raises(ConfigError) as caught:
            parse_rate_limits(bad)
        assert caught.value.setting == "ORCH_RATE_LIMITS"


# -- the script, straight on the stack's Redis --------------------------------------------------


def test_the_script_counts_tokens_leases_and_lets_an_expired_lease_go(
    stack: EmbeddedStack,
) -> None:
    async def main() -> None:
        limits = AsyncLimits(multiplexer(stack.url, stack.key_prefix))
        name = uuid.uuid4().hex
        tokens = [(name, Quota(window_ms=60_000, input_tokens=100, output_tokens=50))]
        assert await limits.acquire("a", tokens, 60) == 0
        assert 59 < await limits.acquire("b", tokens, 60) <= 60  # 120 > 100 in the window
        await limits.release("a", tokens, extra_input=0, output_tokens=80)
        assert await limits.acquire("c", tokens, 1) > 0  # the output is over its limit
        alone = [(uuid.uuid4().hex, Quota(window_ms=60_000, input_tokens=100))]
        assert await limits.acquire("d", alone, 500) == 0  # an empty window
        leases = [(uuid.uuid4().hex, Quota(window_ms=1000, concurrent=2, lease_ms=300))]
        assert [await limits.acquire(k, leases, 0) for k in "xy"] == [0, 0]
        assert 0 < await limits.acquire("z", leases, 0) <= 0.3
        await limits.release("x", leases, 0, 0)
        assert await limits.acquire("z", leases, 0) == 0
        started = time.monotonic()
        while await limits.acquire("w", leases, 0) > 0:  # y and z never released
            await asyncio.sleep(0.02)
        assert 0.2 < time.monotonic() - started < 1.0  # their leases expired
        await close_async()

    asyncio.run(main())


# -- real workers -----------------------------------------------------------------------------


def test_the_fleet_never_exceeds_the_providers_limit(o: Orchestrator, model: ModelServer) -> None:
    model.limit(SERVER_REQUESTS, SERVER_WINDOW_S)
    try:
        asks = [_ask() for _ in range(30)]
        res = o.spawn([t for t, _ in asks], deadline_s=90).wait(timeout_s=90)
        admitted, refused = model.admitted_at(), model.refused_by_limit
    finally:
        model.limit(None)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert refused == 0 and len(admitted) == 30  # not one 429: every request was in the limit
    assert _most_in_a_window(admitted, SERVER_WINDOW_S) <= SERVER_REQUESTS
    assert admitted[-1] - admitted[0] >= 2 * SERVER_WINDOW_S  # 30 at 10 a window: 3 windows
    assert all(e.status is AgentStatus.OK and e.retries == 0 for e in res.results)
    throttled = [e for e in res.results if e.throttled_s > 0]
    assert len(throttled) >= 18, [e.throttled_s for e in res.results]
    assert len({e.worker for e in res.results}) == 2  # the limit held across two processes
    assert max(e.throttled_s for e in res.results) >= 2 * OUR_WINDOW_S - 0.5
    events = wait_for(lambda: len(_events(o, res.run_id, "throttled")) >= len(throttled), 5)
    assert events


def test_a_429_with_retry_after_is_waited_out_and_succeeds(
    o: Orchestrator, model: ModelServer
) -> None:
    model.fail_next(1, 429, retry_after_s=1.0)
    task, sid = _ask("free")
    res = o.spawn([task], deadline_s=60).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    env = res.results[0]
    assert env.retries == 1 and env.throttled_s == 0.0
    tries = [r for r in model.records() if r.id == sid]
    assert [r.status for r in tries] == [429, 200] and tries[1].completed
    assert tries[0].ended_at is not None and tries[1].started_at - tries[0].ended_at >= 0.95
    retry = _events(o, res.run_id, "retry")
    assert [(e["status"], float(e["delay_s"])) for e in retry] == [("429", 1.0)]


def test_a_cancel_during_a_backoff_stops_at_once(o: Orchestrator, model: ModelServer) -> None:
    model.fail_next(1, 429, retry_after_s=30)
    task, _ = _ask("free")
    run = o.spawn([task], deadline_s=60)
    wait_for(lambda: _events(o, run.id, "retry"), 10, "the retry to be scheduled")
    res = _cancelled(run)
    assert res.results[0].retries == 1


def test_a_cancel_during_a_throttle_wait_stops_at_once(o: Orchestrator) -> None:
    first, _ = _ask("slow")
    assert o.spawn([first], deadline_s=60).wait(timeout_s=60).status is RunStatus.SUCCEEDED
    task, _ = _ask("slow")  # one a minute: this one waits for the window to pass
    run = o.spawn([task], deadline_s=120)
    wait_for(lambda: _events(o, run.id, "started"), 10, "the subagent to start")
    time_waited = time.time()
    wait_for(lambda: time.time() - time_waited > 0.3, 1)  # well into its wait
    res = _cancelled(run)
    assert res.results[0].throttled_s > 0.2  # a wait cut short is throttled time too


def _cancelled(run: Run) -> RunResult:
    """Cancel the run and check its one subagent stopped within a second of being asked."""
    run.cancel()
    res = run.settle(timeout_s=10)
    env = res.results[0]
    assert env.status is AgentStatus.CANCELLED, env
    assert env.cancel_requested_at is not None and env.finished_at is not None
    assert env.finished_at - env.cancel_requested_at < 1.0
    return res


def test_retries_stop_at_the_deadline(o: Orchestrator, model: ModelServer) -> None:
    model.fail_next(100, 503)
    try:
        task, sid = _ask("free")
        started = time.time()
        res = o.spawn([task], deadline_s=4).wait(timeout_s=30)
    finally:
        model.clear_failures()
    env = res.results[0]
    assert env.status is AgentStatus.ERROR and env.error is not None, env
    assert env.error.type == "ModelCallFailed" and "HTTP 503" in env.error.message
    assert env.retries >= 2
    assert env.finished_at is not None and env.finished_at < started + 4.0
    assert len([r for r in model.records() if r.id == sid]) == env.retries + 1
