"""Agents that declare their model, rate limit and retry policy (``@agent(model=, rate_limit=,
retry=)``), for tests/test_limits.py's workers only: their limits name ORCH_RATE_LIMITS entries
that only those workers have."""

from __future__ import annotations

import json
import os
import urllib.request

from pydantic import BaseModel

from workers import AgentContext, agent
from workers.errors import ModelCallFailed
from workers.llm import chat
from workers.ratelimit import RateLimit
from workers.retries import RetryPolicy, retrying, retrying_sync

#: A short policy: two quick retries at most.
QUICK = RetryPolicy(attempts=3, backoff_s=0.05, max_backoff_s=0.1)


class Ask(BaseModel):
    prompt: str
    model: str | None = None
    key: str | None = None


class Answer(BaseModel):
    text: str


class Spend(BaseModel):
    tokens_per_attempt: int


@agent("lim.ask", input=Ask, output=Answer, model="lim-m", retry=QUICK)
async def ask(inp: Ask, ctx: AgentContext) -> Answer:
    """One call under the declared model's limit (or the payload's model and key)."""
    messages = [{"role": "user", "content": inp.prompt}]
    return Answer(text=await chat(ctx, model=inp.model, key=inp.key, messages=messages))


@agent("lim.plan", input=Ask, output=Answer, model="lim-m", retry=QUICK)
async def plan(inp: Ask, ctx: AgentContext) -> Answer:
    """``lim.ask`` under another name: pre-flight's test learns its run time alone."""
    return Answer(text=await chat(ctx, messages=[{"role": "user", "content": inp.prompt}]))


@agent(
    "lim.own",
    input=Ask,
    output=Answer,
    rate_limit=RateLimit(requests_per_minute=120, window_s=3.0),  # 6 in any 3 s
    retry=RetryPolicy(attempts=2, backoff_s=0.05, max_backoff_s=0.05),
)
async def own(inp: Ask, ctx: AgentContext) -> Answer:
    """A model with no limit of its own: the agent's inline limit holds every call."""
    messages = [{"role": "user", "content": inp.prompt}]
    return Answer(text=await chat(ctx, model="lim-free", messages=messages))


@agent("lim.sync", input=Ask, output=Answer, model="lim-m")
def sync_ask(inp: Ask, ctx: AgentContext) -> Answer:
    """A sync agent: a blocking turn under the limit, then a plain HTTP call to the model."""
    with ctx.throttle(key=inp.key, tokens=10):
        return Answer(text=retrying_sync(ctx, lambda: _post(inp.prompt)))


@agent("lim.spender", input=Spend, output=Answer, retry=RetryPolicy(attempts=20, backoff_s=0.05))
async def spender(inp: Spend, ctx: AgentContext) -> Answer:
    """Every attempt spends, then fails with a retryable error: only the budget stops it."""

    async def attempt() -> Answer:
        ctx.record_usage(model="lim-free", input_tokens=inp.tokens_per_attempt)
        raise ModelCallFailed("injected 503", status=503)

    return await retrying(ctx, attempt)


def _post(prompt: str) -> str:
    body = {"model": "lim-m", "messages": [{"role": "user", "content": prompt}]}
    req = urllib.request.Request(
        os.environ["ORCH_LLM__BASE_URL"] + "/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ModelCallFailed(f"HTTP {exc.code}", status=exc.code) from None
    return str(answer["choices"][0]["message"]["content"])
