"""The run store: one object over one Redis, made of the store's rooms."""

from __future__ import annotations

from workers.store.dead_letters import DeadLetterStore
from workers.store.final import FinalStore
from workers.store.service import ServiceStore
from workers.store.subtasks import SubtaskStore
from workers.store.tree import TreeStore


class RunStore(SubtaskStore, FinalStore, ServiceStore, DeadLetterStore, TreeStore):
    """Typed access to one Redis holding orchestration state.

    Its parts: run records and events (``records.py``), subtasks and stop flags
    (``subtasks.py``), final results (``final.py``), presence, catalog and statistics
    (``fleet.py``), the coordinator's bookkeeping (``service.py``), child runs and their tree
    (``tree.py``), and what was dropped as
    unreadable (``dead_letters.py``). Nothing outside
    ``workers/store/`` and ``workers/scripts.py`` talks to Redis.
    """
