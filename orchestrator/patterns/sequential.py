"""Any pattern run one task after another: a Celery ``chain`` (pre-flight policy 'auto').

Used when pre-flight judged that parallelism does not pay. Every link is immutable (it takes no
result from the previous one) and the subtasks are the same agent tasks with the same meta, so the
results keep their meaning: spawn collects every output (the last finisher ends the run), gather
ends with its merger, and a race's first valid racer wins, after which the later links see the
run's cancel flag and skip.
"""

from __future__ import annotations

from celery import Celery, chain

from orchestrator.patterns.common import Expansion, agent_signature
from orchestrator.patterns.gather import merge_signature
from orchestrator.request import OrchestrationRequest
from workers.models import CatalogEntry, Pattern, TaskMeta


def build_sequential(
    app: Celery,
    req: OrchestrationRequest,
    entries: list[CatalogEntry],
    merger: CatalogEntry | None,
    meta: TaskMeta,
) -> Expansion:
    """A chain of every subtask in task order, then the merger for a gather."""
    links = [
        agent_signature(app, req, i, entries[i], meta).set(immutable=True)
        for i in range(len(req.tasks))
    ]
    if req.pattern is Pattern.GATHER:
        assert merger is not None
        # In a chain nothing fills the merger's first argument (the chord's member results,
        # which it ignores anyway): pass None.
        body = merge_signature(app, req, merger, meta, note=" sequential")
        links.append(body.clone(args=(None,)).set(immutable=True))
    return Expansion(canvas=chain(*links, app=app), meta=meta)
