"""Agents that spend tokens at a known pace, for the ledger and budget tests (loaded by the
test workers): one ``record_usage`` call per chunk, as a streaming model call makes."""

from __future__ import annotations

import asyncio
import time

from pydantic import BaseModel, Field

from workers import AgentContext, agent, merger, validator


class Spend(BaseModel):
    output_tokens: int = Field(ge=0, description="Tokens to spend in all")
    input_tokens: int = Field(default=0, ge=0)
    per_chunk: int = Field(default=10, ge=1)
    interval_ms: int = Field(default=10, ge=0)
    model: str = "m-priced"
    fail: bool = False


class Spent(BaseModel):
    output_tokens: int
    started_at: float


def _chunks(inp: Spend) -> list[int]:
    full, rest = divmod(inp.output_tokens, inp.per_chunk)
    return [inp.per_chunk] * full + ([rest] if rest else [])


@agent("ledger.spend_async", input=Spend, output=Spent)
async def spend_async(inp: Spend, ctx: AgentContext) -> Spent:
    """Spend tokens chunk by chunk, awaiting between chunks (a cancel lands there)."""
    started = time.time()
    ctx.record_usage(model=inp.model, input_tokens=inp.input_tokens)
    for n in _chunks(inp):
        await asyncio.sleep(inp.interval_ms / 1000)
        ctx.record_usage(model=inp.model, output_tokens=n)
    if inp.fail:
        raise RuntimeError("asked to fail after spending")
    return Spent(output_tokens=ctx.spent.output_tokens, started_at=started)


@agent("ledger.spend_sync", input=Spend, output=Spent)
def spend_sync(inp: Spend, ctx: AgentContext) -> Spent:
    """The same, as a sync agent (ctx.sleep wakes on cancel)."""
    started = time.time()
    ctx.record_usage(model=inp.model, input_tokens=inp.input_tokens)
    for n in _chunks(inp):
        ctx.sleep(inp.interval_ms / 1000)
        ctx.record_usage(model=inp.model, output_tokens=n)
    if inp.fail:
        raise RuntimeError("asked to fail after spending")
    return Spent(output_tokens=ctx.spent.output_tokens, started_at=started)


class Total(BaseModel):
    output_tokens: int
    parts: int


@merger("ledger.total", input=Spent, output=Total)
def total(parts: list[Spent], ctx: AgentContext) -> Total:
    """A merger that spends too (its own model call)."""
    ctx.record_usage(model="m-priced", input_tokens=100, output_tokens=10)
    return Total(output_tokens=sum(p.output_tokens for p in parts), parts=len(parts))


@validator("ledger.any", input=Spent)
def any_output(out: Spent) -> bool:
    """Every finished spender is a valid racer."""
    return True
