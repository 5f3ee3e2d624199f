"""gather-then-merge: a ``chord`` whose body is the merger.

Members return envelopes instead of raising, so the body always runs; it reads the envelopes
by index (a redelivered member counts once) and applies the quorum.
"""

from __future__ import annotations

from celery import Celery, chord, group
from celery.canvas import Signature

from orchestrator.patterns.common import Expansion, member_signatures
from orchestrator.request import OrchestrationRequest
from workers.models import CatalogEntry, TaskMeta


def build_gather(
    app: Celery,
    req: OrchestrationRequest,
    entries: list[CatalogEntry],
    merger: CatalogEntry,
    meta: TaskMeta,
) -> Expansion:
    """Header: every member; body: ``mergers.<name>`` with the run id and quorum."""
    header = group(member_signatures(app, req, entries, meta), app=app)
    body = merge_signature(app, req, merger, meta)
    return Expansion(canvas=chord(header, body, app=app), meta=meta)


def merge_signature(
    app: Celery, req: OrchestrationRequest, merger: CatalogEntry, meta: TaskMeta, note: str = ""
) -> Signature:
    """The merger's signature. Its first argument (the chord's member results) is ignored: it
    reads the envelopes from Redis, each index once."""
    n = len(req.tasks)
    quorum = req.quorum or n
    return app.signature(
        merger.task_name,
        kwargs={"run_id": req.run_id, "meta": meta.model_dump(mode="json"), "quorum": quorum},
        queue=merger.queue,
        task_id=f"{req.run_id}.merge",
        argsrepr=f"run={req.run_id} merge={merger.name} members={n}{note}",
        kwargsrepr=f"quorum={quorum}",
    )
