"""A run and its child runs, recursively, with the ROI rolled up over the tree (pure).

Spend and work roll up without double counting: each run's own ledger holds only its own
subagents' spend (a child's spend is added to its ancestors' *budgets*, not to their ledgers).
A child run started by a subagent whose work was wasted (it lost a race, was cancelled,
failed) is wasted whole: nothing it produced reached a kept result.
"""

from __future__ import annotations

import time

from pydantic import BaseModel, Field

from workers.models import AgentStatus, Pattern, RunParent, RunProgress, RunResult, RunStatus
from workers.patterns import pattern_of

__all__ = ["RunTree", "TreeTotals", "roll_up"]


class TreeTotals(BaseModel):
    """Figures summed over a run and every run below it."""

    runs: int = Field(description="Runs in the tree, this one included.")
    subagents: int = Field(description="Subagents of every run in the tree.")
    wall_s: float = Field(description="The top run's wall time (submit to finish, or so far).")
    work_spent_s: float = 0.0
    work_wasted_s: float = 0.0
    tokens_spent: int = 0
    tokens_wasted: int = 0
    cost_usd_spent: float | None = Field(None, description="None while nothing was priced.")
    cost_usd_wasted: float | None = None


class RunTree(BaseModel):
    """``orch.get_run(id).tree()``: a run, its child runs recursively, and their totals."""

    run_id: str
    pattern: Pattern
    status: RunStatus
    parent: RunParent | None = None
    result: RunResult | None = Field(None, description="None while the run is going.")
    progress: RunProgress | None = Field(None, description="Set while the run is going.")
    children: list[RunTree] = Field(default_factory=list)
    totals: TreeTotals


_WASTED = {
    AgentStatus.ERROR,
    AgentStatus.INVALID,
    AgentStatus.CANCELLED,
    AgentStatus.LOST,
    AgentStatus.SKIPPED,
}


def _useful_indices(result: RunResult | None) -> set[int] | None:
    """Indices of the subagents whose output the run kept (None: not known yet)."""
    if result is None:
        return None
    if result.winner is not None:
        return {result.winner.index}
    if pattern_of(result.pattern).claims_win:
        return set()  # a race nobody won kept nothing
    return {r.index for r in result.results if r.status not in _WASTED}


def _wasted_whole(totals: TreeTotals) -> TreeTotals:
    return totals.model_copy(
        update={
            "work_wasted_s": totals.work_spent_s,
            "tokens_wasted": totals.tokens_spent,
            "cost_usd_wasted": totals.cost_usd_spent,
        }
    )


def _add(a: float | None, b: float | None) -> float | None:
    return None if a is None and b is None else (a or 0.0) + (b or 0.0)


def roll_up(node: RunTree) -> TreeTotals:
    """``node``'s totals from its own figures and its children's (already rolled up)."""
    res, prog = node.result, node.progress
    own = TreeTotals(runs=1, subagents=0, wall_s=0.0)
    if res is not None:
        r = res.report
        own = TreeTotals(
            runs=1,
            subagents=r.n,
            wall_s=r.wall_s,
            work_spent_s=r.work_spent_s,
            work_wasted_s=r.work_wasted_s,
            tokens_spent=r.tokens_spent,
            tokens_wasted=r.tokens_wasted,
            cost_usd_spent=r.cost_usd_spent,
            cost_usd_wasted=r.cost_usd_wasted,
        )
    elif prog is not None:
        own = TreeTotals(
            runs=1,
            subagents=prog.n,
            wall_s=max(0.0, time.time() - prog.created_at),  # so far
            tokens_spent=prog.tokens_spent,
            cost_usd_spent=prog.cost_usd_spent,
        )
    useful = _useful_indices(res)
    total = own
    for child in node.children:
        sub = child.totals
        kept_by = child.parent.index if child.parent else None
        if useful is not None and kept_by not in useful:
            sub = _wasted_whole(sub)
        total = TreeTotals(
            runs=total.runs + sub.runs,
            subagents=total.subagents + sub.subagents,
            wall_s=total.wall_s,
            work_spent_s=total.work_spent_s + sub.work_spent_s,
            work_wasted_s=total.work_wasted_s + sub.work_wasted_s,
            tokens_spent=total.tokens_spent + sub.tokens_spent,
            tokens_wasted=total.tokens_wasted + sub.tokens_wasted,
            cost_usd_spent=_add(total.cost_usd_spent, sub.cost_usd_spent),
            cost_usd_wasted=_add(total.cost_usd_wasted, sub.cost_usd_wasted),
        )
    return total
