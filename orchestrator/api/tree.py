"""``Run.tree()``: a run and every run below it, read from the store, with the ROI rolled up
(``workers.run_tree``)."""

from __future__ import annotations

from workers import ending
from workers.errors import RunNotFound
from workers.lineage import child_ids, parent_in
from workers.run_tree import RunTree, TreeTotals, roll_up
from workers.store import RunStore

__all__ = ["read_tree"]


def read_tree(store: RunStore, run_id: str, *, max_runs: int = 10_000) -> RunTree:
    """The tree below ``run_id`` (children first read, then rolled up from the leaves).

    A child whose record expired is left out; ``max_runs`` bounds what one call reads.
    """
    budget = [max_runs]
    return _node(store, run_id, budget)


def _node(store: RunStore, run_id: str, budget: list[int]) -> RunTree:
    budget[0] -= 1
    result = store.result(run_id)
    if result is not None:
        # Rebuilt from every envelope and the ledger as they are now: a race's stored result
        # is a snapshot at the win, before its losers' last spend arrived.
        result = ending.refresh(store, result)
        parent, kids = result.parent, result.children
        node = RunTree(
            run_id=run_id, pattern=result.pattern, status=result.status, parent=parent,
            result=result, totals=TreeTotals(runs=1, subagents=0, wall_s=0.0),
        )  # fmt: skip
    else:
        record = store.record(run_id)
        progress = store.progress(run_id)
        kids = child_ids(record)
        node = RunTree(
            run_id=run_id, pattern=progress.pattern, status=progress.status,
            parent=parent_in(record), progress=progress,
            totals=TreeTotals(runs=1, subagents=0, wall_s=0.0),
        )  # fmt: skip
    for kid in kids:
        if budget[0] <= 0:
            break
        try:
            node.children.append(_node(store, kid, budget))
        except RunNotFound:
            continue  # expired before its parent: nothing left to show
    node.totals = roll_up(node)
    return node
