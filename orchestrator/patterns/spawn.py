"""parallel-spawn: N independent subagents as a Celery ``group``; the last finisher ends the run."""

from __future__ import annotations

from celery import Celery, group

from orchestrator.patterns.common import Expansion, agent_signature
from orchestrator.request import OrchestrationRequest
from workers.models import CatalogEntry, TaskMeta


def build_spawn(
    app: Celery, req: OrchestrationRequest, entries: list[CatalogEntry], meta: TaskMeta
) -> Expansion:
    """One group of every subagent."""
    sigs = [agent_signature(app, req, i, entries[i], meta) for i in range(len(req.tasks))]
    return Expansion(canvas=group(sigs, app=app), meta=meta)
