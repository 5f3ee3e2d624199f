"""Deliberately shaped agents for the pre-flight and ROI tests (loaded by the test workers).

``nap`` sleeps, so its parallelism is predictable even on a 2-core machine; ``tiny`` returns at
once, so spawning it never pays; ``needs_score`` is a merger whose input ``tiny`` cannot satisfy.
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


@agent("nap", input=Nap, output=Napped, description="Sleep (predictable parallelism).")
def nap(n: Nap, ctx: AgentContext) -> Napped:
    start = time.perf_counter()
    ctx.sleep(n.seconds)  # the work itself; wakes at once on cancel
    return Napped(tag=n.tag, slept_s=time.perf_counter() - start)


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
