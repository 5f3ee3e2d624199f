"""Run handles and the run-level actions shared by clients and the coordinator."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import redis

from orchestrator.events import stream_entries
from orchestrator.feed import FEED_MIN_N, EnvelopeFeed
from workers.errors import RunTimedOut
from workers.models import RoiReport, RunProgress, RunResult, RunStatus
from workers.outcome import build_result, fill_missing
from workers.store import RunStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from orchestrator.client import Orchestrator
    from orchestrator.events import RunEvent

#: How long past its deadline a run may stay open before a waiting client ends it itself
#: (normally the coordinator's deadline task does it first).
DEADLINE_GRACE_S = 2.0

Revoke = Callable[[list[str]], None]


def subtask_ids(run_id: str, n: int) -> list[str]:
    """Every subtask id of a run (ids are deterministic)."""
    return [f"{run_id}.{i}" for i in range(n)] + [f"{run_id}.merge"]


def expire_run(store: RunStore, revoke: Revoke, run_id: str) -> RunResult | None:
    """End a run whose deadline has passed: cancel what is left, keep what arrived."""
    if store.result(run_id) is not None:
        return None
    rec = store.record(run_id)
    if time.time() < float(rec["deadline_at"]):
        return None
    n = int(rec["n"])
    done = int(rec.get("done", "0"))
    deadline_s = float(rec["deadline_at"]) - float(rec["created_at"])
    error = (
        f"deadline of {deadline_s:.1f}s passed with {done} of {n} subagents finished; "
        f"unfinished: {_unfinished(store, run_id, rec)}; they were cancelled (raise "
        "deadline_s, add workers, or shrink the tasks)"
    )
    store.request_cancel(run_id, error, ending=RunStatus.TIMED_OUT)
    revoke(subtask_ids(run_id, n))
    return store.finalize(run_id, RunStatus.TIMED_OUT, error=error)


def _unfinished(store: RunStore, run_id: str, rec: dict[str, str], shown: int = 8) -> str:
    """Which subagents had not reported, and where each was running."""
    agents: list[str] = json.loads(rec["agents"])
    pipe = store.r.pipeline(transaction=False)
    pipe.hkeys(store.keys.results(run_id))
    pipe.hgetall(store.keys.started_by(run_id))
    reported, started = pipe.execute()
    done = {int(i) for i in reported}
    missing = [i for i in range(len(agents)) if i not in done]
    parts = [
        f"#{i} {agents[i]} "
        + (f"running on {started[str(i)]}" if str(i) in started else "never started")
        for i in missing[:shown]
    ]
    if len(missing) > shown:
        parts.append(f"and {len(missing) - shown} more")
    return ", ".join(parts) or "none"


def cancel_run(store: RunStore, revoke: Revoke, run_id: str, reason: str) -> RunResult | None:
    """Stop every queued and running subtask and end the run ``cancelled``."""
    rec = store.record(run_id)
    store.request_cancel(run_id, reason, ending=RunStatus.CANCELLED)
    revoke(subtask_ids(run_id, int(rec["n"])))
    return store.finalize(run_id, RunStatus.CANCELLED, error=reason)


class Run:
    """A handle on one orchestration, wherever it was submitted."""

    def __init__(self, orch: Orchestrator, run_id: str) -> None:
        self.orch = orch
        self.id = run_id

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def result(self) -> RunResult | None:
        """The final result if the run has ended, else None (no waiting)."""
        return self.orch.store.result(self.id)

    def wait(self, timeout_s: float | None = None) -> RunResult:
        """Block until the run ends (no polling: a blocking read on Redis).

        Raises RunTimedOut if ``timeout_s`` passes first; the run itself goes on.
        """
        store = self.orch.store
        limit = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
        deadline_raw, n_raw = store.run_fields(self.id, ["deadline_at", "n"])
        deadline_at, n = float(deadline_raw or 0), int(n_raw or 0)
        # A wide run's envelopes are read while it runs: little is left to fetch at the end.
        feed = EnvelopeFeed(store, self.id, n) if n >= FEED_MIN_N else None
        while True:
            try:
                result = store.result(self.id, feed.have, n) if feed else store.result(self.id)
            except (redis.ConnectionError, redis.TimeoutError):
                # Redis restarting or failing over: keep waiting within the caller's limit.
                if time.monotonic() >= limit:
                    raise
                time.sleep(0.2)
                continue
            if result is not None:
                return result
            now_wall = time.time()
            if now_wall > deadline_at + DEADLINE_GRACE_S:
                # The coordinator should have ended it; it may be gone. End it from here.
                expire_run(store, self.orch.revoke, self.id)
                continue
            remaining = limit - time.monotonic()
            if remaining <= 0:
                raise RunTimedOut(
                    f"run {self.id} still {store.progress(self.id).status.value} after "
                    f"{timeout_s}s of waiting; it goes on: wait again, or run.cancel()",
                    run_id=self.id,
                )
            step = min(remaining, deadline_at + DEADLINE_GRACE_S - now_wall + 0.05)
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if feed:
                    feed.wait(max(step, 0.001))
                else:
                    store.wait_done(self.id, max(step, 0.001))

    async def wait_async(self, timeout_s: float | None = None) -> RunResult:
        """``wait`` for asyncio: awaits the end without blocking the loop, and without a thread
        or a connection per waiting run (one shared blocked read; see orchestrator/aio.py)."""
        from orchestrator.aio import wait_async

        return await wait_async(self, timeout_s)

    def events(self, since: str = "0-0") -> AsyncIterator[RunEvent]:
        """The run's events as they happen (``async for event in run.events()``): from the
        start (or after the event id ``since``), ending with ``run_finished``."""
        from orchestrator.aio import run_events

        return run_events(self, since=since)

    def status(self) -> RunProgress:
        """A live snapshot: status, started, finished, counts per outcome."""
        return self.orch.store.progress(self.id)

    def cancel(self, reason: str = "cancelled by user") -> RunResult:
        """Stop the run everywhere; returns the final result (cancelled, or how it had ended)."""
        cancel_run(self.orch.store, self.orch.revoke, self.id, reason)
        result = self.orch.store.result(self.id)
        assert result is not None
        return result

    def settle(self, timeout_s: float = 10.0) -> RunResult:
        """After the run ended: wait until every subtask that started has reported (a race's
        losers or a cancelled run's subtasks actually stopped), at most ``timeout_s``, then
        :meth:`refreshed`. Subtasks still silent then (their worker died) stay 'cancelled'."""
        store = self.orch.store
        result = self.wait(timeout_s=timeout_s)
        n = len(result.results)
        results_key, events = store.keys.results(self.id), store.keys.events(self.id)
        cursor = "0-0"
        limit = time.monotonic() + timeout_s
        while store.r.hlen(results_key) < n and (left := limit - time.monotonic()) > 0:
            # Each report appends a 'finished' event: block on the stream, no polling.
            got = stream_entries(
                store.r.xread({events: cursor}, count=1000, block=max(1, int(min(left, 1) * 1000)))
            )
            if got and got[0][1]:
                cursor = got[0][1][-1][0]
        return self.refreshed()

    def report(self) -> RoiReport:
        """The ROI report, recomputed from every envelope that has arrived (late losers too)."""
        return self.refreshed().report

    def refreshed(self) -> RunResult:
        """The final result rebuilt from every envelope that has arrived (late losers too);
        RunTimedOut while the run is still going."""
        store = self.orch.store
        result = self.wait(timeout_s=0.001) if self.result() is None else self.result()
        assert result is not None
        rec = store.record(self.id)
        envs = store.envelopes(self.id)
        raw: dict[str, str] = store.r.hgetall(store.keys.started_by(self.id))  # type: ignore[assignment]
        started = {int(i): w for i, w in raw.items()}
        results = fill_missing(rec, envs, started, [r.agent for r in result.results], None)
        winner = result.winner.index if result.winner else None
        fresh = build_result(
            rec,
            results,
            status=result.status,
            finished_at=result.finished_at,
            error=result.error,
            merged=result.merged,
            merge_s=result.report.merge_s,
            winner=winner,
        )
        return fresh
