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
from typing import Any

from celery import Celery

from orchestrator.catalog import Catalog
from workers.deferred import send_deferred
from workers.errors import OrchestratorError
from workers.models import AgentKind, Pattern, TaskMeta, WorkerInfo
from workers.store import RunStore

log = logging.getLogger(__name__)
RECOVERABLE = {Pattern.SPAWN.value, Pattern.RACE.value, Pattern.GATHER.value}


#: A heartbeat entry silent this long is dropped: every run it could matter to has ended.
FORGET_AFTER_S = 7 * 86_400.0


def lost_workers(store: RunStore, lost_after_s: float, now: float) -> set[str]:
    """Hostnames whose heartbeat is older than ``lost_after_s`` (long-dead ones are dropped)."""
    raw: dict[str, str] = store.r.hgetall(store.keys.workers)  # type: ignore[assignment]
    lost, forgotten = set(), []
    for host, info in raw.items():
        age = now - WorkerInfo.model_validate_json(info).heartbeat_at
        if age > max(FORGET_AFTER_S, store.ttl_s):
            forgotten.append(host)
        elif age > lost_after_s:
            lost.add(host)
    if forgotten:
        store.r.hdel(store.keys.workers, *forgotten)
    return lost


def remember_payloads(pipe: Any, store: RunStore, run_id: str, payloads: list[Any]) -> None:
    """Keep a run's payloads while it is open (finalize deletes them), to resend subtasks."""
    key = store.keys.payloads(run_id)
    pipe.hset(key, mapping={str(i): json.dumps(p) for i, p in enumerate(payloads)})
    pipe.expire(key, store.ttl_s)


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
    k = store.keys
    open_runs: list[str] = store.r.zrange(k.deadlines, 0, 499)  # type: ignore[assignment]
    if not open_runs:
        return 0
    pipe = store.r.pipeline(transaction=False)
    for run_id in open_runs:
        pipe.hmget(k.run(run_id), ["then", "then_sent_at", "all_reported_at"])
    sent = 0
    for run_id, (then, sent_at, reported_at) in zip(open_runs, pipe.execute(), strict=True):
        if not then or sent_at or not reported_at or now - float(reported_at) < stale_after_s:
            continue
        if not store.r.hsetnx(k.run(run_id), "then_sent_at", repr(now)):
            continue  # another coordinator (or the late worker) got there first
        send_deferred(app, then)
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


def resend_lost_subtasks(
    app: Celery, store: RunStore, catalog: Catalog, lost_after_s: float, now: float
) -> int:
    """Resend the started, unreported subtasks of workers silent for ``lost_after_s``."""
    lost = lost_workers(store, lost_after_s, now)
    if not lost:
        return 0
    k = store.keys
    sent = 0
    open_runs: list[str] = store.r.zrange(k.deadlines, 0, 499)  # type: ignore[assignment]
    for run_id in open_runs:
        pipe = store.r.pipeline(transaction=False)
        pipe.hgetall(k.started_by(run_id))
        pipe.hkeys(k.results(run_id))
        pipe.hgetall(k.resent(run_id))
        pipe.hmget(
            k.run(run_id),
            ["pattern", "n", "deadline_at", "validate", "queued_at", "agents", "status", "batches"],
        )
        started, reported, resent, fields = pipe.execute()
        pattern, n, deadline_at, validate, queued_at, agents, status, batches = fields
        if pattern not in RECOVERABLE or status != "running" or not agents:
            continue
        todo = lost_indices(
            started, set(reported), resent, lost, json.loads(batches) if batches else None
        )
        if not todo:
            continue
        payloads = store.r.hmget(k.payloads(run_id), list(todo))
        names: list[str] = json.loads(agents)
        meta = TaskMeta(
            pattern=Pattern(pattern),
            n=int(n),
            queued_at=float(queued_at or now),
            deadline_at=float(deadline_at),
            validate_with=validate or None,
        ).model_dump(mode="json")
        for index, payload in zip(todo, payloads, strict=True):
            if payload is None:  # payloads not kept (an older coordinator): the deadline decides
                continue
            try:
                entry = catalog.get(AgentKind.AGENT, names[int(index)])
            except OrchestratorError as exc:
                log.warning("cannot resend %s.%s: %s", run_id, index, exc)
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
                task_id=f"{run_id}.{index}",
                ignore_result=True,
                add_to_parent=False,
                argsrepr=f"run={run_id} pattern={pattern} index={index}/{n} resent",
                kwargsrepr="payload=<resent>",
            )
            lost_on = todo[index]
            store.r.hset(k.resent(run_id), index, lost_on)
            store.r.expire(k.resent(run_id), store.ttl_s)
            store.event(run_id, "resent", index=index, lost_worker=lost_on)
            log.warning(
                "run %s: subtask #%s was on lost worker %s: sent again", run_id, index, lost_on
            )
            sent += 1
    return sent
