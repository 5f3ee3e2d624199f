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
        n = len(req.tasks)
        links.append(
            app.signature(
                merger.task_name,
                # The merger's first argument is the chord's member results; it reads the
                # envelopes from Redis instead, so a chain passes None.
                args=(None,),
                kwargs={
                    "run_id": req.run_id,
                    "meta": meta.model_dump(mode="json"),
                    "quorum": req.quorum or n,
                },
                queue=merger.queue,
                task_id=f"{req.run_id}.merge",
                argsrepr=f"run={req.run_id} merge={merger.name} members={n} sequential",
                kwargsrepr=f"quorum={req.quorum or n}",
                immutable=True,
            )
        )
    return Expansion(canvas=chain(*links, app=app), meta=meta)
