"""gather-then-merge: the members, then the merger, sent by the last member to report.

This is a chord with the counter in our own run record instead of Celery's result backend: the
members are sent like a spawn (pipelined, no result stored or subscribed), and the ``finish.lua``
call that records the n-th envelope tells its worker to send the merge message stored on the
run record (workers/runtime.py). A Celery chord would store and count every member's Celery
result besides the envelope, which made a gather about 10% slower than a raw chord. Members
return envelopes instead of raising, so the merger always runs; it reads the envelopes by index
(a redelivered member counts once) and applies the quorum.
"""

from __future__ import annotations

from celery import Celery
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
    """Members now; ``mergers.<name>`` with the run id and quorum once all have reported."""
    members = member_signatures(app, req, entries, meta)
    body = merge_signature(app, req, merger, meta)
    return Expansion(canvas=None, meta=meta, members=members, then=body)


def merge_signature(
    app: Celery, req: OrchestrationRequest, merger: CatalogEntry, meta: TaskMeta, note: str = ""
) -> Signature:
    """The merger's signature. Its first argument (a chord's member results, when it is one) is
    ignored: it reads the envelopes from Redis, each index once."""
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
