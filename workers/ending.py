"""The one place where a run ends.

Every way a run can end goes through here: its last subtask reporting (a spawn ends from the
record's aggregates, a race with no valid racer fails), a race won, a gather merged, a cancel,
the deadline passing, a send the broker failed, a request refused. Each ending is stored once
(``finalize.lua``: the first finaliser's result stands), and an ending decided by a stop
(cancel, deadline, send failure) is recorded *before* the stop reaches the workers, so that the
subtask whose interruption completes the run reports it as cancelled or timed out, never merely
failed.

The deadline rule lives here too: :func:`overdue`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from workers.lineage import children_in
from workers.models import AgentResult, AgentStatus, RunResult, RunStatus
from workers.names import other_subtask_ids, run_task_ids, subtask_id
from workers.run_result import (
    Aggregates,
    budget_reason,
    build_result,
    failure_reasons,
    fill_missing,
    roi_of_all_ok,
)
from workers.store import RunStore

__all__ = [
    "DEADLINE_GRACE_S",
    "Revoke",
    "cancel",
    "expire",
    "fail",
    "fail_race",
    "fail_send",
    "fail_unrecorded",
    "finish",
    "finish_all_reported",
    "no_revoke",
    "over_budget",
    "overdue",
    "reach_quorum",
    "refresh",
    "stop_children",
    "win",
]

log = logging.getLogger(__name__)

#: How long past its deadline a run may stay open before a waiting client ends it itself
#: (normally a coordinator's sweeper does it first).
DEADLINE_GRACE_S = 2.0
#: A heartbeat at most this old is a live worker's (as pre-flight counts them).
LIVE_S = 30.0

#: Best-effort Celery revoke of task ids (Flower shows them REVOKED; our flags stop them).
Revoke = Callable[[list[str]], None]


def overdue(deadline_at: float, now: float | None = None, *, grace_s: float = 0.0) -> bool:
    """The deadline rule: a run is overdue once ``now`` is past its deadline (plus ``grace_s``,
    which a waiting client gives the coordinators before it ends the run itself)."""
    return (time.time() if now is None else now) > deadline_at + grace_s


def finish(
    store: RunStore,
    run_id: str,
    status: RunStatus,
    *,
    error: str | None = None,
    merged: Any = None,
    merge_s: float = 0.0,
    winner: int | None = None,
    envelopes: dict[int, AgentResult] | None = None,
) -> RunResult | None:
    """Build and store the RunResult unless another finaliser was first (then None).

    ``envelopes``: every envelope, already read by a caller that had to look at them. A run
    being stopped has its 'ending' recorded; any finaliser but a race winner honours it.
    """
    ended, rec, started, envs = store.final_inputs(run_id, with_envelopes=envelopes is None)
    if ended or not rec:
        return None
    envs = envelopes if envelopes is not None else envs or {}
    if rec.get("ending") and winner is None:
        status = RunStatus(rec["ending"])
        error = rec.get("ending_error") or error
    cancel_at = rec.get("cancel_requested_at")
    results = fill_missing(
        rec, envs, started, json.loads(rec["agents"]), float(cancel_at) if cancel_at else None
    )
    result = build_result(
        rec,
        results,
        status=status,
        finished_at=time.time(),
        error=error,
        merged=merged,
        merge_s=merge_s,
        winner=winner,
    )
    if not store.store_result(result, in_hash=len(envs) == len(results)):
        return None
    stop_children(store, run_id, rec, status)
    # Subtasks that never started get their 'skipped' envelope now: revoked ones never will
    # run, and one that still starts sees its envelope and stops (start.lua 'reported').
    store.write_stand_ins(
        run_id,
        {
            r.index: r.model_dump_json()
            for r in results
            if r.index not in envs and r.status is AgentStatus.SKIPPED
        },
    )
    return result


def finish_all_reported(store: RunStore, run_id: str) -> None:
    """End a run whose every subtask reported: succeeded, or failed naming the failures.

    The common case (all ok, nobody stopped) ends from the record's aggregates alone: the
    finisher of a large run reads and writes no envelope.
    """
    if _finish_all_ok(store, run_id):
        return
    envs = store.envelopes(run_id)
    results = sorted(envs.values(), key=_index)
    bad = failure_reasons(results)
    failed = sum(1 for r in results if r.status is not AgentStatus.OK)
    finish(
        store,
        run_id,
        RunStatus.FAILED if bad else RunStatus.SUCCEEDED,
        envelopes=envs,
        error=f"{failed} of {len(results)} subagents failed: {bad}" if bad else None,
    )


def _finish_all_ok(store: RunStore, run_id: str) -> bool:
    """True when the run ended (or had ended) from its aggregates; False when some subtask did
    not succeed or the run is being stopped (the caller then ends it from the envelopes)."""
    ended, rec = store.ended_and_record(run_id)
    if ended or not rec:
        return True
    n = int(rec["n"])
    agg = Aggregates.of(rec)
    if not agg.all_ok(n) or rec.get("ending") or rec.get("cancel_requested_at"):
        return False
    now = time.time()
    report = roi_of_all_ok(agg, n, created_at=float(rec["created_at"]), finished_at=now)
    result = build_result(rec, [], status=RunStatus.SUCCEEDED, finished_at=now, report=report)
    if store.store_result(result, in_hash=True):
        stop_children(store, run_id, rec, RunStatus.SUCCEEDED)
    return True


def fail_race(store: RunStore, run_id: str) -> None:
    """Every racer reported and none won: the race fails with every reason."""
    if store.winner(run_id) is not None:
        return
    envs = store.envelopes(run_id)
    reasons = failure_reasons(sorted(envs.values(), key=_index))
    finish(
        store,
        run_id,
        RunStatus.FAILED,
        envelopes=envs,
        error=f"no racer produced a valid result: {reasons}",
    )


def win(store: RunStore, revoke: Revoke, run_id: str, env: AgentResult, n: int) -> None:
    """A racer claimed the win: stop the others first (one round trip), then end the run.

    Celery's revoke only shows the losers REVOKED in Flower (our flag and message stop them),
    so it goes last.
    """
    store.request_cancel(
        run_id,
        f"race won by #{env.index}",
        keep=env.index,
        event={"type": "won", "index": str(env.index), "worker": env.worker or ""},
    )
    finish(store, run_id, RunStatus.SUCCEEDED, winner=env.index)
    revoke(other_subtask_ids(run_id, n, env.index))


def no_revoke(task_ids: list[str]) -> None:
    """A Revoke that revokes nothing (our flags stop the tasks anyway)."""


def reach_quorum(store: RunStore, revoke: Revoke, run_id: str, n: int) -> None:
    """An early quorum arrived: stop every member that has not reported (queued ones are
    skipped, running ones cancelled); the caller then sends the merger, which merges what
    arrived and ends the run. The stop names the members, not the run: a run-wide flag would
    stop the merger too."""
    reported, _ = store.unreported(run_id)
    rest = [i for i in range(n) if i not in reported]
    quorum = store.run_fields(run_id, ["run_id", "early_quorum"])[1] or "?"
    reason = f"early quorum of {quorum} reached: no longer needed"
    if rest:
        store.request_cancel(
            run_id, reason, indices=rest, event={"type": "quorum_reached", "quorum": quorum}
        )
        revoke([subtask_id(run_id, i) for i in rest])


def _stop(store: RunStore, revoke: Revoke, run_id: str, reason: str, status: RunStatus) -> None:
    """Record how the run ends, flag it, tell every worker, revoke every message it sent (but
    a merger that must still merge what finished: over budget)."""
    rec = store.record(run_id)
    store.request_cancel(run_id, reason, ending=status)
    stop_children(store, run_id, rec, status)
    batches = json.loads(rec["batches"]) if rec.get("batches") else []
    merges = status is RunStatus.BUDGET_EXCEEDED
    revoke(run_task_ids(run_id, int(rec["n"]), len(batches), with_merger=not merges))


def _no_revoke(task_ids: list[str]) -> None:
    """A child run stopped from its parent's ending has no Celery app at hand: its flags stop
    its subtasks (queued ones are skipped when they arrive)."""


def stop_children(store: RunStore, run_id: str, rec: dict[str, str], status: RunStatus) -> None:
    """A run ended or is being stopped: so is every child run of it still going (and, through
    their endings, every run below them). No child outlives its parent: Temporal's default
    parent-close policy, and a cancel that reaches the whole tree (celery#4667)."""
    for child in children_in(rec):
        try:
            if not store.has_ended(child):
                cancel(store, _no_revoke, child, f"parent run {run_id} ended {status.value}")
        except Exception as exc:  # one child's failure must not keep the others running
            log.warning("run %s: could not stop child run %s: %s", run_id, child, exc)


def cancel(store: RunStore, revoke: Revoke, run_id: str, reason: str) -> RunResult | None:
    """Stop every queued and running subtask and end the run ``cancelled``."""
    _stop(store, revoke, run_id, reason, RunStatus.CANCELLED)
    return finish(store, run_id, RunStatus.CANCELLED, error=reason)


def over_budget(store: RunStore, revoke: Revoke, run_id: str) -> str:
    """The run's spend crossed its budget: record that it ends ``budget_exceeded``, stop every
    queued and running subtask, revoke its messages; returns the reason. The pattern then ends
    the run (a gather merges what finished when its quorum is met)."""
    reason = budget_reason(store.record(run_id))
    _stop(store, revoke, run_id, reason, RunStatus.BUDGET_EXCEEDED)
    return reason


def expire(store: RunStore, revoke: Revoke, run_id: str) -> RunResult | None:
    """End a run whose deadline has passed: cancel what is left, keep what arrived."""
    if store.has_ended(run_id):
        return None
    rec = store.record(run_id)
    deadline_at = float(rec["deadline_at"])
    if not overdue(deadline_at):
        return None
    n = int(rec["n"])
    deadline_s = deadline_at - float(rec["created_at"])
    unfinished = _unfinished(store, run_id, json.loads(rec["agents"]))
    advice = (
        "start a worker whose ORCH_AGENT_MODULES has that agent"
        if "no live worker serves" in unfinished
        else "raise deadline_s, add workers, or shrink the tasks"
    )
    error = (
        f"deadline of {deadline_s:.1f}s passed with {rec.get('done', '0')} of {n} subagents "
        f"finished; unfinished: {unfinished}; they were cancelled ({advice})"
    )
    _stop(store, revoke, run_id, error, RunStatus.TIMED_OUT)
    return finish(store, run_id, RunStatus.TIMED_OUT, error=error)


def _unfinished(store: RunStore, run_id: str, agents: list[str], shown: int = 8) -> str:
    """Which subagents had not reported, and where each was running."""
    done, started = store.unreported(run_id)
    missing = [i for i in range(len(agents)) if i not in done]
    unserved = _unserved(store, {agents[i] for i in missing if i not in started})

    def where(i: int) -> str:
        if i in started:
            return f"running on {started[i]}"
        if agents[i] in unserved:
            return f"never started: no live worker serves agent {agents[i]}"
        return "never started"

    parts = [f"#{i} {agents[i]} {where(i)}" for i in missing[:shown]]
    if len(missing) > shown:
        parts.append(f"and {len(missing) - shown} more")
    return ", ".join(parts) or "none"


def _unserved(store: RunStore, agents: set[str]) -> set[str]:
    """Which agents of never-started subtasks no live worker serves (the likely reason)."""
    try:
        return store.unserved_agents(agents, LIVE_S)
    except Exception as exc:  # only the reason's wording depends on it: end the run anyway
        log.warning("could not read which workers serve %s: %s", sorted(agents), exc)
        return set()


def fail_send(store: RunStore, revoke: Revoke, run_id: str, reason: str) -> None:
    """The broker failed while a run's messages were being sent: stop what was sent and end
    the run failed with the reason, rather than leave it to its deadline."""
    _stop(store, revoke, run_id, reason, RunStatus.FAILED)
    finish(store, run_id, RunStatus.FAILED, error=reason)
    log.error("run %s: %s", run_id, reason)


def fail(store: RunStore, run_id: str, reason: str) -> None:
    """End a run that never started anything (refused, malformed, not enqueued)."""
    finish(store, run_id, RunStatus.FAILED, error=reason)


def fail_unrecorded(store: RunStore, run_id: str, reason: str) -> bool:
    """End a run known only by the id of a request that could not be accepted, if nobody
    recorded it (a non-Python client writes no record): a waiter on its done stream then hears
    why. A run somebody recorded is left alone (the request may not be its own). True if it
    was ended here."""
    if store.run_exists(run_id):
        return False
    now = time.time()
    store.create_run(
        {
            "run_id": run_id,
            "pattern": "parallel-spawn",  # a placeholder: the request said nothing usable
            "n": 0,
            "created_at": repr(now),
            "deadline_at": repr(now),
            "status": RunStatus.SUBMITTED.value,
            "agents": [],
            "done": 0,
        }
    )
    fail(store, run_id, reason)
    return True


def refresh(store: RunStore, result: RunResult) -> RunResult:
    """A final result rebuilt from every envelope that has arrived since (late losers too)."""
    rec = store.record(result.run_id)
    envs = store.envelopes(result.run_id)
    started = store.started_by(result.run_id)
    results = fill_missing(rec, envs, started, [r.agent for r in result.results], None)
    return build_result(
        rec,
        results,
        status=result.status,
        finished_at=result.finished_at,
        error=result.error,
        merged=result.merged,
        merge_s=result.report.merge_s,
        winner=result.winner.index if result.winner else None,
    )


def _index(env: AgentResult) -> int:
    return env.index
