"""The tree benchmark's agent: a subagent that spawns copies of itself, levels deep, whose
leaves work (an awaited sleep) until they are stopped."""

from __future__ import annotations

from pydantic import BaseModel, Field

from orchestrator import Task
from workers import AgentContext, agent


class Branch(BaseModel):
    width: int = Field(ge=1, le=64)
    levels: int = Field(ge=0, le=8)
    leaf_s: float = Field(60.0, ge=0, le=600)


class Leaves(BaseModel):
    leaves: int


@agent("bench.branch", input=Branch, output=Leaves)
async def branch(b: Branch, ctx: AgentContext) -> Leaves:
    if b.levels == 0:
        await ctx.sleep_async(b.leaf_s)
        return Leaves(leaves=1)
    below = Branch(width=b.width, levels=b.levels - 1, leaf_s=b.leaf_s)
    result = await ctx.spawn([Task("bench.branch", below) for _ in range(b.width)]).wait_async()
    return Leaves(leaves=sum(Leaves.model_validate(o).leaves for o in result.outputs()))
