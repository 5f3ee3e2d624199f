"""The agents of ``python -m bench.ratelimit``: one model call each, with and without the
fleet-wide limiter (the limiter's model is the only one ORCH_RATE_LIMITS lists)."""

from __future__ import annotations

from pydantic import BaseModel

from workers import AgentContext, agent
from workers.llm import chat
from workers.retries import RetryPolicy

#: The model the bench's ORCH_RATE_LIMITS limits; the baselines call another, unlisted one.
LIMITED_MODEL = "bench-limited"
FREE_MODEL = "bench-free"


class Call(BaseModel):
    prompt: str


class Reply(BaseModel):
    text: str


def _messages(inp: Call) -> list[dict[str, str]]:
    return [{"role": "user", "content": inp.prompt}]


@agent("rl.limited", input=Call, output=Reply, model=LIMITED_MODEL)
async def limited(inp: Call, ctx: AgentContext) -> Reply:
    """Our limiter: a turn under the model's limit before each attempt (and retries)."""
    return Reply(text=await chat(ctx, messages=_messages(inp)))


@agent("rl.retrying", input=Call, output=Reply, model=FREE_MODEL)
async def retrying(inp: Call, ctx: AgentContext) -> Reply:
    """The naive baseline: no limiter, retries with backoff honouring Retry-After."""
    return Reply(text=await chat(ctx, messages=_messages(inp)))


@agent("rl.once", input=Call, output=Reply, model=FREE_MODEL, retry=RetryPolicy(attempts=1))
async def once(inp: Call, ctx: AgentContext) -> Reply:
    """The no-retry baseline: one attempt, a 429 is a failure."""
    return Reply(text=await chat(ctx, messages=_messages(inp)))
