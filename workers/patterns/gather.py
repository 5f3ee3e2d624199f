"""gather-then-merge: the members, then the merger, sent by the last member to report.

This is a chord with the counter in our own run record instead of Celery's result backend: the
members are sent like a spawn (pipelined, no result stored or subscribed), and the
``finish.lua`` call that records the n-th envelope tells its worker to send the merger's
message, which the coordinator stored on the run record. A Celery chord would store and count
every member's Celery result besides the envelope, which made a gather about 10% slower than a
raw chord. Members return envelopes instead of raising, so the merger always runs; it reads the
envelopes by index (a redelivered member counts once) and applies the quorum.

If the worker of the last member dies before sending, its redelivery sends the message, or a
coordinator does after ``ORCH_LOST_WORKER_S`` (``orchestrator/service/recovery.py``). A second
merger is harmless: the first result stands.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, ClassVar

from celery import Celery
from celery.canvas import Signature

from workers import ending
from workers.models import AgentKind, CatalogEntry, Pattern, TaskMeta
from workers.names import merge_id
from workers.patterns.base import Completion, PatternSpec, refuse_race_options

if TYPE_CHECKING:
    from workers.request import OrchestrationRequest

log = logging.getLogger(__name__)


def merger_message(sig: Signature) -> str:
    """The JSON the coordinator stores for the merger's signature."""
    return json.dumps({"task": sig.task, "kwargs": sig.kwargs, "options": sig.options})


def send_merger_message(app: Celery, message: str) -> None:
    """Send a stored merger message. Its first argument (a chord's results) is None."""
    spec = json.loads(message)
    app.send_task(spec["task"], args=[None], kwargs=spec["kwargs"], **spec["options"])


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
        task_id=merge_id(req.run_id),
        argsrepr=f"run={req.run_id} merge={merger.name} members={n}{note}",
        kwargsrepr=f"quorum={quorum}",
    )


def send_merger(done: Completion, *, only_if_unsent: bool = False) -> None:
    """Send the merger's message, recording when. ``only_if_unsent``: only the first caller
    sends (the last report and an early quorum's envelope, or a redelivered member whose worker
    died before it could send, may all get here at once): the send is claimed first."""
    message, sent, all_reported = done.store.merger_message(done.run_id)
    if not message or (only_if_unsent and (sent or not all_reported)):
        return
    now = time.time()
    if only_if_unsent and not done.store.claim_merger_send(done.run_id, now):
        return  # another caller claimed it between the read and here
    try:
        done.send(message)
    except Exception as exc:  # broker away past its retries: this subtask itself succeeded
        if only_if_unsent:
            done.store.release_merger_send(done.run_id)  # the coordinators' resend takes it
        log.warning(
            "run %s: could not send the merger (%s); a coordinator sends it after "
            "ORCH_LOST_WORKER_S",
            done.run_id,
            exc,
        )
        return
    if not only_if_unsent:
        done.store.mark_merger_sent(done.run_id, now)


class Gather(PatternSpec):
    """Structured research, then one merged, typed output."""

    pattern: ClassVar[Pattern] = Pattern.GATHER
    progress_unit: ClassVar[str] = "steps"  # the merge is a step

    def check_options(self, req: OrchestrationRequest) -> None:
        if not req.merge:
            raise ValueError("gather-then-merge needs merge=<merger name>")
        refuse_race_options(req)

    def consumer(self, req: OrchestrationRequest) -> tuple[AgentKind, str] | None:
        return (AgentKind.MERGER, req.merge) if req.merge else None

    def after_members(
        self,
        app: Celery,
        req: OrchestrationRequest,
        merger: CatalogEntry | None,
        meta: TaskMeta,
        note: str = "",
    ) -> Signature | None:
        assert merger is not None
        return merge_signature(app, req, merger, meta, note)

    def record_fields(self, req: OrchestrationRequest) -> dict[str, str]:
        # finish.lua reads it: the envelope that makes the ok count equal it merges early.
        return {"early_quorum": str(req.quorum)} if req.early and req.quorum else {}

    def on_all_reported(self, done: Completion) -> None:
        # Unless sent already: by an early quorum (or a crossed budget), whose merger must not
        # run twice (its tokens would be paid twice).
        send_merger(done, only_if_unsent=True)

    def on_quorum(self, done: Completion, n: int) -> None:
        ending.reach_quorum(done.store, done.revoke, done.run_id, n)
        # Claimed: the last straggler's report may be sending it at this very moment.
        send_merger(done, only_if_unsent=True)

    def on_reported_again(self, done: Completion) -> None:
        send_merger(done, only_if_unsent=True)

    def on_budget(self, done: Completion) -> None:
        # The merger merges what finished if the quorum is met, else fails naming the budget
        # (the recorded ending); a second merger sent by the last report is harmless.
        send_merger(done)

    def progress(self, done: int, n: int, *, merged: bool, decided: bool) -> tuple[int, int]:
        return done + (1 if merged else 0), n + 1


GATHER = Gather()
