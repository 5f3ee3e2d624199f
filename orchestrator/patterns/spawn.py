"""parallel-spawn: N independent subagents as a Celery group (one group id, sent message by
message); the last finisher ends the run."""

from __future__ import annotations

from celery import Celery

from orchestrator.patterns.common import Expansion, member_signatures
from orchestrator.request import OrchestrationRequest
from workers.models import CatalogEntry, TaskMeta


def build_spawn(
    app: Celery, req: OrchestrationRequest, entries: list[CatalogEntry], meta: TaskMeta
) -> Expansion:
    """One group of every subagent."""
    sigs = member_signatures(app, req, entries, meta)
    return Expansion(canvas=None, meta=meta, members=sigs)
