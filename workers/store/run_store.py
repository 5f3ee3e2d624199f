"""The run store: one object over one Redis, made of the store's rooms."""

from __future__ import annotations

from workers.store.final import FinalStore
from workers.store.service import ServiceStore
from workers.store.subtasks import SubtaskStore


class RunStore(SubtaskStore, FinalStore, ServiceStore):
    """Typed access to one Redis holding orchestration state.

    Its parts: run records and events (``records.py``), subtasks and stop flags
    (``subtasks.py``), final results (``final.py``), presence, catalog and statistics
    (``fleet.py``), and the coordinator's bookkeeping (``service.py``). Nothing outside
    ``workers/store/`` and ``workers/scripts.py`` talks to Redis.
    """
