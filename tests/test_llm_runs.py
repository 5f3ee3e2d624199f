"""``workers.llm.chat`` on real worker processes against the real loopback model server: the
three patterns record in every envelope exactly what the server served, a race loser's stream
is closed mid-way with no more counted than was sent, and the API key shows nowhere (logs,
envelopes, events, anything in Redis)."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import AgentStatus, EmbeddedStack, Orchestrator, RunResult, RunStatus, Task
from tests.agents_llm import SYSTEM
from tests.conftest import AGENT_MODULES, client_for, stack_for, wait_for
from tests.model_server import ModelServer, StreamRecord
from workers.models import Usage

pytestmark = pytest.mark.integration

KEY = f"sk-live-{uuid.uuid4().hex}"
IN_PER_MTOK, OUT_PER_MTOK = 1000.0, 3000.0
PRICES = f'{{"m": {{"input_per_mtok": {IN_PER_MTOK}, "output_per_mtok": {OUT_PER_MTOK}}}}}'


@pytest.fixture(scope="module")
def stack(model: ModelServer) -> Iterator[EmbeddedStack]:
    yield from stack_for(
        name="llm",
        workers=1,
        concurrency=1,
        agent_modules=[*AGENT_MODULES, "tests.agents_llm"],
        extra_env={
            "ORCH_LLM__BASE_URL": model.url + "/v1",
            "ORCH_LLM__API_KEY": KEY,
            "ORCH_PRICES": PRICES,
        },
    )


@pytest.fixture(scope="module")
def o(stack: EmbeddedStack) -> Iterator[Orchestrator]:
    yield from client_for(stack)


def _ask(tokens: int, interval_ms: int = 5) -> tuple[Task, str]:
    stream_id = uuid.uuid4().hex
    prompt = f"answer [[tokens={tokens} interval_ms={interval_ms} id={stream_id}]]"
    return Task("llm.ask", {"prompt": prompt}), stream_id


def _served(model: ModelServer, stream_id: str) -> StreamRecord:
    rec = wait_for(
        lambda: (r := model.record(stream_id)) is not None and r.ended_at is not None and r,
        5,
        f"the server to end stream {stream_id}",
    )
    assert isinstance(rec, StreamRecord)
    assert rec.authorization == f"Bearer {KEY}"  # the key did reach the provider
    return rec


def _assert_usage_is_served(usage: Usage | None, rec: StreamRecord) -> None:
    assert usage is not None and rec.completed
    assert (usage.model, usage.input_tokens, usage.output_tokens) == (
        "m",
        rec.prompt_tokens,
        rec.completion_tokens,
    )
    cost = (rec.prompt_tokens * IN_PER_MTOK + rec.completion_tokens * OUT_PER_MTOK) / 1e6
    assert usage.cost_usd == pytest.approx(cost) and usage.unpriced == []


def test_spawn_envelopes_carry_the_served_usage(o: Orchestrator, model: ModelServer) -> None:
    asks = [_ask(10 + 5 * i) for i in range(4)]
    res = o.spawn([t for t, _ in asks], deadline_s=60).wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    served = [_served(model, sid) for _, sid in asks]
    for env, rec in zip(res.results, served, strict=True):
        assert env.output is not None and env.output["text"] == " tok" * rec.completion_tokens
        _assert_usage_is_served(env.usage, rec)
    total = sum(r.prompt_tokens + r.completion_tokens for r in served)
    assert res.report.tokens_spent == total
    _assert_no_key(o, res)


def test_gather_with_an_async_merger_that_calls_the_model(
    o: Orchestrator, model: ModelServer
) -> None:
    asks = [_ask(8 + i) for i in range(3)]
    run = o.gather([t for t, _ in asks], merge="llm.summarize", deadline_s=60)
    res = run.wait(timeout_s=60)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.merged is not None and res.merged["summary"] == " tok" * 4
    served = [_served(model, sid) for _, sid in asks]
    for env, rec in zip(res.results, served, strict=True):
        _assert_usage_is_served(env.usage, rec)
    merge = _served(model, f"merge-{run.id}")
    total = sum(r.prompt_tokens + r.completion_tokens for r in [*served, merge])
    assert res.report.tokens_spent == total  # the merger's call is in the run's ledger too
    _assert_no_key(o, res)


def test_a_race_losers_stream_is_closed_with_no_more_counted_than_sent(
    o: Orchestrator, model: ModelServer
) -> None:
    fast, fast_id = _ask(15, interval_ms=20)
    slow = [_ask(300, interval_ms=10) for _ in range(3)]  # 3 s each, if not stopped
    run = o.race([fast, *(t for t, _ in slow)], validate="llm.nonempty", deadline_s=60)
    assert run.wait(timeout_s=60).status is RunStatus.SUCCEEDED
    res = run.settle(timeout_s=10)  # the losers' own envelopes, once they stopped
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.winner is not None and res.winner.index == 0
    _assert_usage_is_served(res.winner.usage, _served(model, fast_id))
    for (task, sid), env in zip(slow, res.results[1:], strict=True):
        assert env.status is AgentStatus.CANCELLED, env
        rec = _served(model, sid)
        assert rec.disconnected_at is not None and not rec.completed
        assert env.cancel_requested_at is not None
        assert rec.disconnected_at - env.cancel_requested_at < 1.0
        assert env.usage is not None and 1 <= env.usage.output_tokens <= rec.chunks_sent < 300
        # No usage chunk came: the prompt is estimated from its characters.
        chars = len(SYSTEM) + len(task.payload["prompt"])
        assert env.usage.input_tokens == math.ceil(chars / 4)
    assert res.report.tokens_spent == sum(e.usage.total_tokens for e in res.results if e.usage)
    _assert_no_key(o, res)


def test_a_refused_call_is_an_error_envelope_without_the_key(
    o: Orchestrator, model: ModelServer, stack: EmbeddedStack
) -> None:
    model.fail_next(1, 401)
    task, _ = _ask(3)
    res = o.spawn([task], deadline_s=60).wait(timeout_s=60)
    env = res.results[0]
    assert env.status is AgentStatus.ERROR and env.error is not None
    assert env.error.type == "ModelCallFailed"
    assert "HTTP 401" in env.error.message and "ORCH_LLM__API_KEY" in env.error.message
    assert env.usage is None  # refused before any token: nothing billed
    _assert_no_key(o, res)
    log_dir = stack.log_dir
    assert log_dir is not None
    logs = sorted(log_dir.glob("*.log"))
    assert logs and all(KEY not in p.read_text(errors="replace") for p in logs)
    assert "ModelCallFailed" in (log_dir / "worker1.log").read_text(errors="replace")


def _assert_no_key(o: Orchestrator, res: RunResult) -> None:
    """Not in the result, the run's events, nor any value anywhere in the Redis server (run
    records, envelopes, Celery's results and messages)."""
    assert KEY not in res.model_dump_json()
    events = o.store.events_after(res.run_id)
    assert events and KEY not in repr(events)
    assert KEY not in _everything_in(o.store.r)


def _everything_in(r: Any) -> str:
    out: list[str] = []
    for key in r.scan_iter(count=1000):
        kind = r.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        out.append(f"{key!r} {_value(r, key, kind)!r}")
    return "\n".join(out)


def _value(r: Any, key: Any, kind: str) -> Any:
    if kind == "string":
        return r.get(key)
    if kind == "hash":
        return r.hgetall(key)
    if kind == "list":
        return r.lrange(key, 0, -1)
    if kind == "set":
        return r.smembers(key)
    if kind == "zset":
        return r.zrange(key, 0, -1)
    if kind == "stream":
        return r.xrange(key)
    return kind
