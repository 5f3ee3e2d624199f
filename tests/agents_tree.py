"""Agents that orchestrate (composition tests): a lead that gathers researchers, researchers
that race solvers, a recursive fan-out, sync parents, and a router."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field

from orchestrator import Task
from workers import AgentContext, Route, agent, merger, validator


class Query(BaseModel):
    topics: list[str]
    solver_ms: list[int] = Field(default_factory=lambda: [50, 400])
    tokens: int = 100
    marker_dir: str = ""
    child_deadline_s: float | None = None


class Answer(BaseModel):
    facts: list[str]
    children: list[str]


class Question(BaseModel):
    topic: str
    solver_ms: list[int]
    tokens: int = 100
    marker_dir: str = ""


class Finding(BaseModel):
    topic: str
    fact: str


class Solve(BaseModel):
    topic: str
    approach: int
    sleep_ms: int
    tokens: int = 100
    marker_dir: str = ""


class Findings(BaseModel):
    facts: list[str]


def _mark(marker_dir: str, name: str) -> None:
    if marker_dir:
        Path(marker_dir, name).write_text(str(os.getpid()))


@agent("tree.solver", input=Solve, output=Finding)
async def solver(s: Solve, ctx: AgentContext) -> Finding:
    """Work for a while (spending tokens as it goes), then leave a marker."""
    steps = max(1, s.sleep_ms // 50)
    for _ in range(steps):
        await ctx.sleep_async(s.sleep_ms / steps / 1000)
        ctx.record_usage(model="tree-model", input_tokens=s.tokens // steps, output_tokens=0)
    _mark(s.marker_dir, f"solver-{s.topic}-{s.approach}")
    return Finding(topic=s.topic, fact=f"{s.topic} by approach {s.approach}")


@validator("tree.valid", input=Finding)
def valid(f: Finding) -> bool:
    return bool(f.fact)


@agent("tree.researcher", input=Question, output=Finding)
async def researcher(q: Question, ctx: AgentContext) -> Finding:
    """Race two (or more) solvers for one topic."""
    tasks = [
        Task("tree.solver", Solve(topic=q.topic, approach=i, sleep_ms=ms, tokens=q.tokens,
                                  marker_dir=q.marker_dir))
        for i, ms in enumerate(q.solver_ms)
    ]  # fmt: skip
    result = await ctx.race(tasks, validate="tree.valid").wait_async()
    if result.winner is None:
        raise RuntimeError(f"race {result.run_id} ended {result.status.value}: {result.error}")
    return Finding.model_validate(result.winner.output)


@merger("tree.merge", input=Finding, output=Findings)
def merge(found: list[Finding], ctx: AgentContext) -> Findings:
    return Findings(facts=sorted(f.fact for f in found))


@agent("tree.lead", input=Query, output=Answer)
async def lead(q: Query, ctx: AgentContext) -> Answer:
    """Gather one researcher per topic, each racing its solvers."""
    tasks = [
        Task("tree.researcher", Question(topic=t, solver_ms=q.solver_ms, tokens=q.tokens,
                                         marker_dir=q.marker_dir))
        for t in q.topics
    ]  # fmt: skip
    run = ctx.gather(tasks, merge="tree.merge", deadline_s=q.child_deadline_s)
    found = await run.wait_async()
    if not found.ok:
        raise RuntimeError(f"gather {found.run_id} ended {found.status.value}: {found.error}")
    return Answer(facts=Findings.model_validate(found.merged).facts, children=ctx.children)


class Fan(BaseModel):
    width: int = Field(ge=1, le=64)
    levels: int = Field(ge=0, le=8, description="Levels of child runs below this subagent.")
    leaf_ms: int = 20


class Count(BaseModel):
    leaves: int


@agent("tree.fan", input=Fan, output=Count)
async def fan(f: Fan, ctx: AgentContext) -> Count:
    """A subagent that spawns ``width`` copies of itself, ``levels`` deep."""
    if f.levels == 0:
        await ctx.sleep_async(f.leaf_ms / 1000)
        return Count(leaves=1)
    below = Fan(width=f.width, levels=f.levels - 1, leaf_ms=f.leaf_ms)
    result = await ctx.spawn([Task("tree.fan", below) for _ in range(f.width)]).wait_async()
    result.raise_for_status()
    return Count(leaves=sum(Count.model_validate(o).leaves for o in result.outputs()))


class SyncFan(BaseModel):
    width: int = 2
    leaf_ms: int = 50
    rendezvous_dir: str = ""
    parties: int = 1


@agent("tree.sync_leaf", input=Fan, output=Count)
def sync_leaf(f: Fan, ctx: AgentContext) -> Count:
    ctx.sleep(f.leaf_ms / 1000)
    return Count(leaves=1)


@agent("tree.sync_lead", input=SyncFan, output=Count)
def sync_lead(f: SyncFan, ctx: AgentContext) -> Count:
    """A sync parent: spawns sync leaves and blocks its slot waiting for them. With
    ``parties`` > 1, every party first waits until all have started (so they wait at once)."""
    if f.rendezvous_dir:
        Path(f.rendezvous_dir, f"{ctx.run_id}-{ctx.index}").write_text("here")
        limit = time.monotonic() + 10
        while len(os.listdir(f.rendezvous_dir)) < f.parties and time.monotonic() < limit:
            ctx.sleep(0.02)
    leaf = Fan(width=1, levels=0, leaf_ms=f.leaf_ms)
    run = ctx.spawn([Task("tree.sync_leaf", leaf) for _ in range(f.width)])
    result = run.wait().raise_for_status()
    return Count(leaves=len(result.outputs()))


class Ask(BaseModel):
    text: str


class Reply(BaseModel):
    by: str
    text: str


@agent("tree.triage", input=Ask, output=Route)
async def triage(a: Ask, ctx: AgentContext) -> Route:
    """A classifier: maths to the maths specialist, 'nowhere' to an agent nobody serves."""
    ctx.record_usage(model="tree-model", input_tokens=30, output_tokens=5)
    if "nowhere" in a.text:
        return Route(agent="tree.no_such_agent", payload={"text": a.text})
    agent_name = "tree.maths" if any(c.isdigit() for c in a.text) else "tree.prose"
    return Route(agent=agent_name, payload={"text": a.text})


@agent("tree.maths", input=Ask, output=Reply)
async def maths(a: Ask, ctx: AgentContext) -> Reply:
    ctx.record_usage(model="tree-model", input_tokens=300, output_tokens=200)
    return Reply(by="maths", text=str(sum(int(c) for c in a.text if c.isdigit())))


@agent("tree.prose", input=Ask, output=Reply)
async def prose(a: Ask, ctx: AgentContext) -> Reply:
    ctx.record_usage(model="tree-model", input_tokens=100, output_tokens=100)
    await asyncio.sleep(0)
    return Reply(by="prose", text=a.text.upper())
