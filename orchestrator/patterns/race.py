"""race-then-cancel: a ``group`` of racers; the first valid one claims the win (SET NX) in its
worker, then cancels and revokes its siblings. The last failure ends an all-failed race."""

from __future__ import annotations

from celery import Celery

from orchestrator.patterns.common import Expansion, Lazy, agent_signature
from orchestrator.request import OrchestrationRequest
from workers.models import CatalogEntry, TaskMeta


def build_race(
    app: Celery, req: OrchestrationRequest, entries: list[CatalogEntry], meta: TaskMeta
) -> Expansion:
    """One group of every racer; validation and the claim happen inside each racer."""
    sigs = Lazy(len(req.tasks), lambda i: agent_signature(app, req, i, entries[i], meta))
    return Expansion(canvas=None, meta=meta, members=sigs)
