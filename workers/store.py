"""Run state in Redis: records, envelopes, race claims, cancel flags, events, final results.

Shared by workers (start/finish/finalise) and the orchestrator (create, cancel, wait).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import redis

from workers.errors import RunNotFound
from workers.keys import Keys
from workers.models import (
    AgentResult,
    AgentStatus,
    Pattern,
    RunProgress,
    RunResult,
    RunStatus,
    StoredRunResult,
)
from workers.outcome import Aggregates, build_result, fill_missing, finish_args, roi_of_all_ok
from workers.results import RESULT_SCRIPT, assemble_result, parse_envelopes, result_args
from workers.stats import Sample, agent_sample


def _script(name: str) -> str:
    return resources.files("workers").joinpath("lua", name).read_text()


@dataclass(frozen=True)
class FinishOutcome:
    """What recording one envelope changed."""

    new: bool
    done: int
    n: int
    won: bool


class RunStore:
    """Typed access to one Redis holding orchestration state."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        ttl_s: int,
        events_maxlen: int,
        recent: int,
        stats_samples: int = 200,
        stats_ttl_s: int = 7 * 86_400,
    ) -> None:
        self.r = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.maxlen = events_maxlen
        self.recent = recent
        self.stats_samples = stats_samples
        self.stats_ttl_s = stats_ttl_s
        self._start = client.register_script(_script("start.lua"))
        self._finish = client.register_script(_script("finish.lua"))
        self._finalize = client.register_script(_script("finalize.lua"))
        self._result = client.register_script(RESULT_SCRIPT)

    # -- records ---------------------------------------------------------------------------
    def create_run(self, record: dict[str, Any], events: Sequence[dict[str, str]] = ()) -> None:
        """Write a new run record (status submitted) and index it as recent.

        ``events`` (e.g. the pre-flight verdict) follow 'submitted' in the same round trip.
        """
        run_id = record["run_id"]
        flat: dict[Any, Any] = {
            k: v if isinstance(v, str) else json.dumps(v) for k, v in record.items()
        }
        key = self.keys.run(run_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hset(key, mapping=flat)
        pipe.expire(key, self.ttl_s)
        pipe.xadd(
            self.keys.events(run_id),
            {"type": "submitted", "n": str(record["n"]), "ts": str(record["created_at"])},
            maxlen=self.maxlen,
            approximate=True,
        )
        for extra in events:
            entry: dict[Any, Any] = {**extra, "ts": str(record["created_at"])}
            pipe.xadd(
                self.keys.events(run_id),
                entry,
                maxlen=self.maxlen,
                approximate=True,
            )
        pipe.expire(self.keys.events(run_id), self.ttl_s)
        pipe.zadd(self.keys.runs, {run_id: float(record["created_at"])})
        pipe.zadd(self.keys.deadlines, {run_id: float(record["deadline_at"])})
        pipe.zremrangebyrank(self.keys.runs, 0, -self.recent - 1)
        pipe.execute()

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of the run record."""
        flat: dict[Any, Any] = {
            k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()
        }
        self.r.hset(self.keys.run(run_id), mapping=flat)

    def record(self, run_id: str) -> dict[str, str]:
        """The run record, or RunNotFound."""
        rec: dict[str, str] = self.r.hgetall(self.keys.run(run_id))  # type: ignore[assignment]
        if not rec:
            raise RunNotFound.under(run_id, self.keys.prefix)
        return rec

    def run_fields(self, run_id: str, names: list[str]) -> list[str | None]:
        """Some fields of the run record (not the whole record: it holds every agent name), or
        RunNotFound. ``names[0]`` must be a field every record has."""
        values: list[str | None] = self.r.hmget(self.keys.run(run_id), names)  # type: ignore[assignment]
        if values[0] is None:
            raise RunNotFound.under(run_id, self.keys.prefix)
        return values

    def event(self, run_id: str, kind: str, **fields: Any) -> None:
        """Append one event to the run's stream."""
        data = {"type": kind, "ts": repr(time.time())}
        data.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()})
        self.r.xadd(self.keys.events(run_id), data, maxlen=self.maxlen, approximate=True)  # type: ignore[arg-type]

    # -- subtasks --------------------------------------------------------------------------
    def start_task(self, run_id: str, index: int, worker: str) -> tuple[int, str]:
        """Count the attempt and return (attempt, reason not to run or '')."""
        k = self.keys
        attempt, reason = self._start(
            keys=[
                k.run(run_id),
                k.attempts(run_id),
                k.cancel(run_id),
                k.task_cancel(run_id),
                k.events(run_id),
                k.results(run_id),
                k.started_by(run_id),
            ],
            args=[index, repr(time.time()), worker, self.ttl_s, self.maxlen],
        )
        return int(attempt), str(reason)

    def finish_task(
        self, run_id: str, env: AgentResult, *, claim: bool, stats: Sequence[Sample] = ()
    ) -> FinishOutcome:
        """Record the envelope once; with claim, try to win the race.

        The agent's duration sample (and any extra ``stats``, e.g. its validator's time) is
        appended in the same script, so statistics cost no extra round trip.
        """
        k = self.keys
        own = agent_sample(env)
        samples = [own, *stats] if own is not None else list(stats)
        new, done, n, won = self._finish(
            keys=[
                k.results(run_id),
                k.run(run_id),
                k.events(run_id),
                k.winner(run_id),
                k.stats_counts,
                *[k.stats(name) for name, _ in samples],
            ],
            args=[
                env.index,
                env.model_dump_json(),
                env.status.value,
                self.ttl_s,
                "1" if claim else "0",
                repr(time.time()),
                self.maxlen,
                *finish_args(env),
                self.stats_samples,
                self.stats_ttl_s,
                *[text for _, text in samples],
            ],
        )
        return FinishOutcome(new=bool(new), done=int(done), n=int(n), won=bool(won))

    def envelope(self, run_id: str, index: int) -> AgentResult | None:
        """The recorded envelope of one subtask."""
        raw = self.r.hget(self.keys.results(run_id), str(index))
        return AgentResult.model_validate_json(raw) if raw else None

    def some_envelopes(self, run_id: str, indices: list[int]) -> dict[int, AgentResult]:
        """The recorded envelopes of these subtasks (parsed in one call)."""
        raw: list[str | None] = self.r.hmget(  # type: ignore[assignment]
            self.keys.results(run_id), [str(i) for i in indices]
        )
        return parse_envelopes([v for v in raw if v is not None])

    def envelopes(self, run_id: str) -> dict[int, AgentResult]:
        """Every recorded envelope by index."""
        raw: dict[str, str] = self.r.hgetall(self.keys.results(run_id))  # type: ignore[assignment]
        return {int(i): AgentResult.model_validate_json(v) for i, v in raw.items()}

    # -- cancellation ----------------------------------------------------------------------
    def request_cancel(
        self,
        run_id: str,
        reason: str,
        *,
        keep: int | None = None,
        indices: list[int] | None = None,
        ending: RunStatus | None = None,
        event: dict[str, str] | None = None,
    ) -> float:
        """Flag the run (or some subtasks) cancelled and tell every worker process at once.

        The flag is what queued subtasks see when they start; the message interrupts running ones.
        ``event``: an event to append first, in the same round trip (a race's 'won').
        """
        now = time.time()
        k = self.keys
        pipe = self.r.pipeline(transaction=False)
        if event is not None:
            entry: dict[Any, Any] = {**event, "ts": repr(now)}
            pipe.xadd(k.events(run_id), entry, maxlen=self.maxlen, approximate=True)
        if ending is not None:
            # Whoever ends the run next (maybe the subtask this cancel interrupts) ends it so.
            pipe.hsetnx(k.run(run_id), "ending", ending.value)
            pipe.hsetnx(k.run(run_id), "ending_error", reason)
        if indices is None:
            pipe.set(k.cancel(run_id), reason, nx=True, ex=self.ttl_s)
            pipe.hsetnx(k.run(run_id), "cancel_requested_at", repr(now))
        else:
            pipe.hset(k.task_cancel(run_id), mapping={str(i): reason for i in indices})
            pipe.expire(k.task_cancel(run_id), self.ttl_s)
        message = {"run": run_id, "indices": indices, "keep": keep, "reason": reason, "at": now}
        pipe.publish(k.cancel_channel, json.dumps(message))
        pipe.xadd(
            k.events(run_id),
            {"type": "cancel_requested", "reason": reason, "ts": repr(now)},
            maxlen=self.maxlen,
            approximate=True,
        )
        pipe.execute()
        return now

    def cancel_reason(self, run_id: str, index: int) -> str | None:
        """Why this subtask should stop, if it should."""
        pipe = self.r.pipeline(transaction=False)
        pipe.get(self.keys.cancel(run_id))
        pipe.hget(self.keys.task_cancel(run_id), str(index))
        run_reason, task_reason = pipe.execute()
        return run_reason or task_reason  # type: ignore[no-any-return]

    # -- the end of a run ------------------------------------------------------------------
    def finalize(
        self,
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

        ``envelopes``: every envelope, already read by a caller that had to look at them.

        A run being cancelled or timed out has its 'ending' recorded first; any finaliser but a
        race winner honours it, so the subtask whose interruption completes the run cannot
        report the run as merely failed.
        """
        k = self.keys
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(k.result(run_id))
        pipe.hgetall(k.run(run_id))
        pipe.hgetall(k.started_by(run_id))
        if envelopes is None:
            pipe.hgetall(k.results(run_id))
        ended, rec, started, *raw = pipe.execute()
        if ended or not rec:
            return None
        if rec.get("ending") and winner is None:
            status = RunStatus(rec["ending"])
            error = rec.get("ending_error") or error
        envs = (
            envelopes
            if envelopes is not None
            else {int(i): AgentResult.model_validate_json(v) for i, v in raw[0].items()}
        )
        cancel_at = rec.get("cancel_requested_at")
        results = fill_missing(
            rec,
            envs,
            {int(i): w for i, w in started.items()},
            json.loads(rec["agents"]),
            float(cancel_at) if cancel_at else None,
        )
        now = time.time()
        result = build_result(
            rec,
            results,
            status=status,
            finished_at=now,
            error=error,
            merged=merged,
            merge_s=merge_s,
            winner=winner,
        )
        if not self._store_result(result, in_hash=len(envs) == len(results)):
            return None
        # Subtasks that never started get their 'skipped' envelope now: revoked ones never will
        # run, and one that still starts sees its envelope and stops (start.lua 'reported').
        stand_ins = {
            str(r.index): r.model_dump_json()
            for r in results
            if r.index not in envs and r.status is AgentStatus.SKIPPED
        }
        if stand_ins:
            pipe = self.r.pipeline(transaction=False)
            for index, raw_env in stand_ins.items():
                pipe.hsetnx(k.results(run_id), index, raw_env)
            pipe.expire(k.results(run_id), self.ttl_s)
            pipe.execute()
        return result

    def finalize_all_ok(self, run_id: str) -> bool:
        """End a run whose every subtask reported ok from the record's aggregates alone.

        The finisher of a large run reads and writes no envelope: they stay in the results
        hash, which is complete. False (nothing done) when that does not hold: some subtask did
        not succeed, or the run is being stopped; the caller then ends it from the envelopes.
        """
        k = self.keys
        pipe = self.r.pipeline(transaction=False)
        pipe.exists(k.result(run_id))
        pipe.hgetall(k.run(run_id))
        ended, rec = pipe.execute()
        if ended or not rec:
            return True
        n = int(rec["n"])
        agg = Aggregates.of(rec)
        if not agg.all_ok(n) or rec.get("ending") or rec.get("cancel_requested_at"):
            return False
        now = time.time()
        created = float(rec["created_at"])
        report = roi_of_all_ok(agg, n, created_at=created, finished_at=now)
        result = build_result(rec, [], status=RunStatus.SUCCEEDED, finished_at=now, report=report)
        self._store_result(result, in_hash=True)
        return True

    def _store_result(self, result: RunResult, *, in_hash: bool) -> bool:
        """Store the final result once (finalize.lua); False if the run had already ended."""
        k = self.keys
        run_id = result.run_id
        if in_hash:
            stored = StoredRunResult.model_construct(
                **{**dict(result), "results": [], "results_key": k.results(run_id)}
            ).model_dump_json()
        else:
            stored = result.model_dump_json()
        ended = self._finalize(
            keys=[
                k.result(run_id),
                k.run(run_id),
                k.done(run_id),
                k.events(run_id),
                k.deadlines,
                k.payloads(run_id),
                k.results(run_id),
            ],
            args=[
                stored,
                result.status.value,
                repr(result.finished_at),
                self.ttl_s,
                self.maxlen,
                run_id,
                "1" if in_hash else "0",
            ],
        )
        return bool(int(ended))

    def result(
        self, run_id: str, have: dict[int, AgentResult] | None = None, n: int = 0
    ) -> RunResult | None:
        """The final result, once the run has ended (one round trip).

        ``have``: envelopes of this run's ``n`` subtasks that the caller already read
        (orchestrator.feed.EnvelopeFeed); only the others are fetched.
        """
        args, missing = result_args(have, n)
        reply = self._result(keys=self.result_keys(run_id), args=args)
        return assemble_result(reply, have, missing)

    def result_keys(self, run_id: str) -> list[str]:
        """KEYS of result.lua (RESULT_SCRIPT) for this run."""
        k = self.keys
        return [k.result(run_id), k.run(run_id), k.results(run_id)]

    def wait_done(self, run_id: str, timeout_s: float) -> bool:
        """Block (no polling) until the run has ended or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            block_ms = max(1, int(min(remaining, 5.0) * 1000))
            got = self.r.xread({self.keys.done(run_id): "0-0"}, count=1, block=block_ms)
            if got:
                return True
            if time.monotonic() >= deadline:
                return False

    def progress(self, run_id: str) -> RunProgress:
        """A live snapshot of the run."""
        k = self.keys
        rec = self.record(run_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hlen(k.attempts(run_id))
        pipe.get(k.winner(run_id))
        started, winner = pipe.execute()
        agg = Aggregates.of(rec)
        return RunProgress(
            run_id=run_id,
            pattern=Pattern(rec["pattern"]),
            status=RunStatus(rec["status"]),
            n=int(rec["n"]),
            started=int(started),
            finished=agg.done,
            counts=agg.counts,
            created_at=float(rec["created_at"]),
            deadline_at=float(rec["deadline_at"]),
            winner=int(winner) if winner is not None else None,
        )

    def recent_runs(self, limit: int) -> list[str]:
        """Most recent run ids first."""
        ids: list[str] = self.r.zrevrange(self.keys.runs, 0, limit - 1)  # type: ignore[assignment]
        return ids
