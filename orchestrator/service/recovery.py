"""Recovering subtasks of a lost worker.

With the Redis broker, a message taken by a worker that then dies (power, OOM of the whole
machine, network cut) comes back only after the visibility timeout, which is sized above the
longest deadline, so without help its run could only end by its deadline. Coordinators watch the
workers' heartbeats instead: when one has been silent for ``lost_worker_s``, every spawn, race or
gather subtask it had started and not reported is sent again under the same task id. That is safe
because envelopes are recorded once per index: if the lost worker comes back and finishes too,
the first envelope stands and the other run is wasted work, never a duplicate result.

A gather whose members have all reported but whose merger nobody sent (the worker of the last
member died in between) gets its merger from a coordinator once ``lost_worker_s`` has passed.

In a batched run, the subtasks of a lost batch message that had not started yet are sent again
too, one message each. Gather members are covered like any other: a gather counts envelopes, not
Celery results, and the member that completes it, resent or not, sends the merger.

Not covered (those runs end by their deadline, naming what was lost): messages the lost worker
had prefetched but not started.
"""

from __future__ import annotations

import json
import logging
import time

from celery import Celery

from orchestrator.catalog import Catalog
from workers.errors import OrchestratorError
from workers.lineage import parent_in
from workers.models import AgentKind, Pattern, TaskMeta
from workers.names import subtask_id
from workers.patterns import pattern_of, send_merger_message
from workers.store import RunStore

log = logging.getLogger(__name__)

#: Open runs looked at per round.
OPEN_RUNS = 500


def recover(app: Celery, store: RunStore, catalog: Catalog, lost_after_s: float) -> int:
    """Resend the started, unreported subtasks of lost workers, and mergers nobody sent;
    returns how many messages were sent."""
    if lost_after_s <= 0:
        return 0
    now = time.time()
    return resend_lost_subtasks(app, store, catalog, lost_after_s, now) + resend_mergers(
        app, store, lost_after_s, now
    )


def resend_mergers(app: Celery, store: RunStore, stale_after_s: float, now: float) -> int:
    """Send the merger of every open gather whose members all reported more than
    ``stale_after_s`` ago while no one sent it (the last member's worker died first, and its
    message will not come back before the visibility timeout)."""
    sent = 0
    for run_id, message, reported_at in store.mergers_due(store.open_runs(OPEN_RUNS)):
        if now - reported_at < stale_after_s:
            continue
        if not store.claim_merger_send(run_id, now):
            continue  # another coordinator (or the late worker) got there first
        send_merger_message(app, message)
        store.event(
            run_id, "merger_resent", reason="every member reported; nobody had sent the merger"
        )
        log.warning("run %s: every member reported but no merger was sent: sent it", run_id)
        sent += 1
    return sent


def lost_indices(
    started: dict[str, str],
    done: set[str],
    resent: dict[str, str],
    lost: set[str],
    batches: list[list[int]] | None,
) -> dict[str, str]:
    """Subtasks to send again, each with the lost worker it went down with.

    Those a lost worker started and did not report; and in a batched run, every unreported
    subtask of a batch message a lost worker was running that never started (the message is
    gone with the worker). One already resent for that worker is not sent again.
    """
    todo = {
        i: worker
        for i, worker in started.items()
        if worker in lost and i not in done and resent.get(i) != worker
    }
    for chunk in batches or []:
        keys = [str(i) for i in chunk]
        holders = sorted({started[i] for i in keys if started.get(i) in lost})
        if not holders:
            continue
        for i in keys:
            if i not in done and i not in started and resent.get(i) != holders[0]:
                todo[i] = holders[0]
    return todo


#: Run record fields recovery reads.
_FIELDS = (
    "pattern", "n", "deadline_at", "validate", "queued_at", "agents", "status", "batches",
    "parent",
)  # fmt: skip


def resend_lost_subtasks(
    app: Celery, store: RunStore, catalog: Catalog, lost_after_s: float, now: float
) -> int:
    """Resend the started, unreported subtasks of workers silent for ``lost_after_s``."""
    lost = store.lost_workers(lost_after_s, now)
    if not lost:
        return 0
    sent = 0
    for run_id in store.open_runs(OPEN_RUNS):
        view = store.recovery_view(run_id, _FIELDS)
        f = view.fields
        if not f["pattern"] or not pattern_of(f["pattern"]).recoverable:
            continue
        if f["status"] != "running" or not f["agents"]:
            continue
        batches = json.loads(f["batches"]) if f["batches"] else None
        todo = lost_indices(view.started, view.reported, view.resent, lost, batches)
        if todo:
            sent += _resend(app, store, catalog, run_id, todo, f, now)
    return sent


def _resend(
    app: Celery,
    store: RunStore,
    catalog: Catalog,
    run_id: str,
    todo: dict[str, str],
    f: dict[str, str | None],
    now: float,
) -> int:
    """Send these subtasks of one run again (index -> the lost worker each went down with)."""
    names: list[str] = json.loads(f["agents"] or "[]")
    meta = TaskMeta(
        pattern=Pattern(f["pattern"] or ""),
        n=int(f["n"] or 0),
        queued_at=float(f["queued_at"] or now),
        deadline_at=float(f["deadline_at"] or now),
        validate_with=f["validate"] or None,
        ancestors=parent.ancestors if (parent := parent_in({"parent": f["parent"] or ""})) else [],
    ).model_dump(mode="json")
    sent = 0
    for index, payload in zip(todo, store.payloads(run_id, list(todo)), strict=True):
        if payload is None:  # payloads not kept (an older coordinator): the deadline decides
            continue
        try:
            entry = catalog.get(AgentKind.AGENT, names[int(index)])
        except OrchestratorError as exc:
            log.warning("cannot resend subtask #%s of run %s: %s", index, run_id, exc)
            continue
        app.send_task(
            entry.task_name,
            kwargs={
                "run_id": run_id,
                "index": int(index),
                "payload": json.loads(payload),
                "meta": meta,
            },
            queue=entry.queue,
            task_id=subtask_id(run_id, int(index)),
            ignore_result=True,
            add_to_parent=False,
            argsrepr=f"run={run_id} pattern={f['pattern']} index={index}/{f['n']} resent",
            kwargsrepr="payload=<resent>",
        )
        store.mark_resent(run_id, index, todo[index])
        log.warning(
            "run %s: subtask #%s was on lost worker %s: sent again", run_id, index, todo[index]
        )
        sent += 1
    return sent
