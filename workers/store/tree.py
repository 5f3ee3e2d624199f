"""Composition's state: which child runs a run's subagents started, the tree's size, a child's
spend toward its ancestors' budgets, and the sync subagents that hold a slot while they wait.

A child is a field of its parent's record (``child:<run id>`` -> the subagent's index), so
whoever reads the record (every ending does) sees the children without another round trip.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from workers.lineage import CHILD_FIELD, child_value, children_in
from workers.scripts import TREE_SPEND
from workers.store.base import StoreBase

if TYPE_CHECKING:
    from workers.ledger import SpendDelta

__all__ = ["TreeStore"]

#: The root record's count of its descendants' subagents (ORCH_TREE__MAX_SUBAGENTS).
TREE_SUBAGENTS = "tree:subagents"


class TreeStore(StoreBase):
    """Child runs, the tree's size and spend, waiting parents."""

    def reserve_subagents(self, root_id: str, n: int, limit: int) -> int | None:
        """Count ``n`` more subagents in the tree of ``root_id`` (its own included); the new
        total, or None (nothing counted) when that would exceed ``limit``."""
        key = self.keys.run(root_id)
        pipe = self.pipeline()
        pipe.hincrby(key, TREE_SUBAGENTS, n)
        pipe.hget(key, "n")
        total, own = pipe.execute()
        if int(total) + int(own or 0) <= limit:
            return int(total) + int(own or 0)
        self.r.hincrby(key, TREE_SUBAGENTS, -n)
        return None

    def add_child(self, parent_id: str, child_id: str, index: int) -> None:
        """Name a child run on its parent's record (before the child's messages are sent:
        an ending of the parent from then on stops it)."""
        pipe = self.pipeline()
        pipe.hset(self.keys.run(parent_id), CHILD_FIELD + child_id, child_value(index, time.time()))
        self.keep(pipe, self.keys.run(parent_id))
        pipe.execute()

    def children(self, run_id: str) -> dict[str, int]:
        """The child runs of a run (run id -> the starting subagent's index)."""
        rec: dict[str, str] = self.r.hgetall(self.keys.run(run_id))  # type: ignore[assignment]
        return children_in(rec)

    def add_tree_spend(self, ancestors: list[str], spend: SpendDelta) -> list[str]:
        """Count a child run's spend toward each ancestor's budget; the ancestors this call
        took over their budgets (stop those runs)."""
        if not ancestors or not spend:
            return []
        keys = [self.keys.run(a) for a in ancestors]
        args = [spend.input_tokens, spend.output_tokens, repr(spend.cost_usd)]
        crossed = TREE_SPEND(self.r, keys=keys, args=[*args, repr(time.time()), self.ttl_s])
        return [ancestors[int(i) - 1] for i in crossed or []]

    def hold_waiting(self, holder: str, ttl_s: float) -> None:
        """A sync subagent (``<hostname>|<task id>``) waits for a child run in its slot, for
        at most ``ttl_s`` more unless renewed."""
        self.r.hset(self.keys.waiting_parents, holder, repr(time.time() + ttl_s))

    def release_waiting(self, holder: str) -> None:
        """The waiting subagent is done waiting."""
        self.r.hdel(self.keys.waiting_parents, holder)

    def waiting_by_host(self) -> dict[str, int]:
        """Waiting sync subagents per worker hostname (aged-out entries dropped)."""
        raw: dict[str, str] = self.r.hgetall(self.keys.waiting_parents)  # type: ignore[assignment]
        now, counts, stale = time.time(), dict[str, int](), []
        for holder, until in raw.items():
            if float(until) < now:
                stale.append(holder)
                continue
            host = holder.split("|", 1)[0]
            counts[host] = counts.get(host, 0) + 1
        if stale:
            self.r.hdel(self.keys.waiting_parents, *stale)
        return counts
