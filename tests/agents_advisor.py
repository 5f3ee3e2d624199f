"""Deliberately shaped agents for the pre-flight and ROI tests (loaded by the test workers).

``nap`` sleeps, so its parallelism is predictable even on a 2-core machine; ``tiny`` returns at
once, so spawning it never pays; ``needs_score`` is a merger whose input ``tiny`` cannot satisfy;
``spender`` records a given number of tokens (ctx.record_usage) over a given time, as a model
call streaming them would.
"""

import time

from pydantic import BaseModel, Field

from workers import AgentContext, agent, merger, validator


class Nap(BaseModel):
    seconds: float = Field(ge=0, le=30)
    tag: int = 0


class Napped(BaseModel):
    tag: int
    slept_s: float


class Words(BaseModel):
    text: str


class Said(BaseModel):
    text: str


class Joined(BaseModel):
    texts: list[str]


class Scored(BaseModel):
    text: str
    score: float


class Ranked(BaseModel):
    best: str


class Spend(BaseModel):
    tokens: int = Field(ge=0, le=10_000_000)
    seconds: float = Field(0.0, ge=0, le=30)
    #: Dollars for all of the tokens (the shared test workers have no ORCH_PRICES).
    cost_usd: float | None = Field(None, ge=0)
    tag: int = 0


class Spent(BaseModel):
    tag: int
    tokens: int


@agent("nap", input=Nap, output=Napped, description="Sleep (predictable parallelism).")
def nap(n: Nap, ctx: AgentContext) -> Napped:
    start = time.perf_counter()
    ctx.sleep(n.seconds)  # the work itself; wakes at once on cancel
    return Napped(tag=n.tag, slept_s=time.perf_counter() - start)


#: Pieces ``spender`` records its tokens in: a stopped one has spent part of them.
SPEND_CHUNKS = 10


@agent("spender", input=Spend, output=Spent, description="Spends tokens over time.")
def spender(s: Spend, ctx: AgentContext) -> Spent:
    for i in range(SPEND_CHUNKS):
        ctx.sleep(s.seconds / SPEND_CHUNKS)  # wakes at once (and raises) when stopped
        share = s.tokens * (i + 1) // SPEND_CHUNKS - s.tokens * i // SPEND_CHUNKS
        cost = s.cost_usd / SPEND_CHUNKS if s.cost_usd is not None else None
        ctx.record_usage(
            model="advisor-test-model",
            input_tokens=share // 2,
            output_tokens=share - share // 2,
            cost_usd=cost,
        )
    return Spent(tag=s.tag, tokens=ctx.spent.total_tokens)


@agent("tiny", input=Words, output=Said, description="Answers at once: never worth a spawn.")
def tiny(w: Words, ctx: AgentContext) -> Said:
    return Said(text=w.text)


@agent("blink", input=Words, output=Said, description="Answers at once (adaptive batching).")
def blink(w: Words, ctx: AgentContext) -> Said:
    return Said(text=w.text)


@merger("join_said", input=Said, output=Joined, description="Texts in task order.")
def join_said(items: list[Said], ctx: AgentContext) -> Joined:
    return Joined(texts=[i.text for i in items])


@merger("needs_score", input=Scored, output=Ranked, description="Needs a score tiny lacks.")
def needs_score(items: list[Scored], ctx: AgentContext) -> Ranked:
    return Ranked(best=max(items, key=lambda i: i.score).text)


@validator("said_good", input=Said, description="Text starts with 'good'.")
def said_good(s: Said) -> bool:
    return s.text.startswith("good")
