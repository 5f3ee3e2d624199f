"""Run records, their event streams and the blocking reads waiters use."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from workers.errors import RunNotFound
from workers.models import Pattern, RunProgress, RunStatus
from workers.run_result import Aggregates
from workers.spend_report import Ledger
from workers.store.base import StoreBase, flat
from workers.store.timeouts import blocking_for

#: (stream key, [(entry id, fields)]) as an XREAD reply normalised by :func:`stream_entries`.
StreamReply = list[tuple[str, list[tuple[str, dict[str, Any]]]]]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def stream_entries(reply: Any) -> StreamReply:
    """Normalise an XREAD reply (RESP2 list or RESP3 dict) to [(key, [(id, fields)])]."""
    if not reply:
        return []
    items = reply.items() if isinstance(reply, dict) else reply
    out: StreamReply = []
    for key, entries in items:
        entries_ = entries[0] if entries and isinstance(entries[0], list) else entries
        out.append((_text(key), [(_text(i), dict(f)) for i, f in entries_]))
    return out


class RecordStore(StoreBase):
    """Run records and events."""

    def create_run(
        self,
        record: dict[str, Any],
        events: Sequence[dict[str, str]] = (),
        *,
        request: str | None = None,
    ) -> None:
        """Write a new run record (status submitted) and index it as recent.

        ``events`` (e.g. the pre-flight verdict) follow 'submitted' in the same round trip;
        ``request``: the wire request's JSON, kept for a coordinator that must finish sending.
        """
        run_id = record["run_id"]
        key = self.keys.run(run_id)
        pipe = self.pipeline()
        pipe.hset(key, mapping=flat(record))
        pipe.expire(key, self.ttl_s)
        if request is not None:
            pipe.set(self.keys.request(run_id), request, ex=self.ttl_s)
        stream = self.keys.events(run_id)
        ts = str(record["created_at"])
        pipe.xadd(
            stream,
            {"type": "submitted", "n": str(record["n"]), "ts": ts},
            maxlen=self.maxlen,
            approximate=True,
        )
        for extra in events:
            pipe.xadd(stream, {**extra, "ts": ts}, maxlen=self.maxlen, approximate=True)
        pipe.expire(stream, self.ttl_s)
        pipe.zadd(self.keys.runs, {run_id: float(record["created_at"])})
        pipe.zadd(self.keys.deadlines, {run_id: float(record["deadline_at"])})
        pipe.zremrangebyrank(self.keys.runs, 0, -self.recent - 1)
        pipe.execute()

    def update_run(self, run_id: str, **fields: Any) -> None:
        """Set fields of the run record."""
        pipe = self.pipeline()
        pipe.hset(self.keys.run(run_id), mapping=flat(fields))
        self.keep(pipe, self.keys.run(run_id))
        pipe.execute()

    def set_run_field_once(self, run_id: str, name: str, value: str) -> bool:
        """Set one field of the run record unless it is set (True if this call set it)."""
        pipe = self.pipeline()
        pipe.hsetnx(self.keys.run(run_id), name, value)
        self.keep(pipe, self.keys.run(run_id))
        return bool(pipe.execute()[0])

    def run_exists(self, run_id: str) -> bool:
        """Whether the run has a record."""
        return bool(self.r.exists(self.keys.run(run_id)))

    def has_record(self, run_id: str) -> bool:
        """Whether the run's record is the one it was created with: a late write to a run the
        server lost (an envelope, an event) recreates a partial record, which does not count."""
        return bool(self.r.hexists(self.keys.run(run_id), "run_id"))

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
        data = {"type": kind, "ts": repr(time.time()), **flat(fields)}
        pipe = self.pipeline()
        pipe.xadd(self.keys.events(run_id), data, maxlen=self.maxlen, approximate=True)
        self.keep(pipe, self.keys.events(run_id))
        pipe.execute()

    def events_after(self, run_id: str, since: str = "0-0") -> list[tuple[str, dict[str, str]]]:
        """Every event after ``since`` that is in the stream now (no waiting)."""
        low = f"({since}" if since != "0-0" else "-"
        raw: list[tuple[str, dict[str, str]]] = self.r.xrange(self.keys.events(run_id), min=low)  # type: ignore[assignment]
        return [(str(i), dict(f)) for i, f in raw]

    def read_events(
        self, run_id: str, cursor: str, *, count: int, block_s: float | None = None
    ) -> list[tuple[str, dict[str, Any]]]:
        """Events after ``cursor``; with ``block_s``, wait up to that long for the first."""
        block = None if block_s is None else max(1, int(block_s * 1000))
        with blocking_for(block_s or 0.0):
            reply = self.r.xread({self.keys.events(run_id): cursor}, count=count, block=block)
        got = stream_entries(reply)
        return got[0][1] if got else []

    def follow_events(
        self, run_id: str, *, since: str = "0-0", block_s: float = 0.5
    ) -> Iterator[list[tuple[str, dict[str, Any]]]]:
        """Batches of new events, blocking up to ``block_s`` per batch (empty: nothing new)."""
        cursor = since
        while True:
            batch = self.read_events(run_id, cursor, count=500, block_s=block_s)
            if batch:
                cursor = batch[-1][0]
            yield batch

    def ended_within(self, run_id: str, block_s: float) -> bool:
        """Block up to ``block_s`` on the run's done stream; True once the run has ended."""
        block_ms = max(1, int(block_s * 1000))
        with blocking_for(block_s):
            return bool(self.r.xread({self.keys.done(run_id): "0-0"}, count=1, block=block_ms))

    def wait_done(self, run_id: str, timeout_s: float) -> bool:
        """Block (no polling) until the run has ended or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if self.ended_within(run_id, min(remaining, 5.0)):
                return True
            if time.monotonic() >= deadline:
                return False

    def progress(self, run_id: str) -> RunProgress:
        """A live snapshot of the run."""
        k = self.keys
        rec = self.record(run_id)
        pipe = self.pipeline()
        pipe.hlen(k.attempts(run_id))
        pipe.get(k.winner(run_id))
        started, winner = pipe.execute()
        agg = Aggregates.of(rec)
        led = Ledger.of(rec)
        return RunProgress(
            tokens_spent=led.tokens,
            cost_usd_spent=led.cost_usd if led.priced else None,
            max_tokens=led.max_tokens,
            max_cost_usd=led.max_cost_usd,
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

    def runs_fields(self, run_ids: Sequence[str], names: list[str]) -> list[list[str | None]]:
        """Some fields of many run records, one round trip (a row of Nones: no record), e.g. to
        filter the recent runs by status and pattern before reading the few shown."""
        pipe = self.pipeline()
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), names)
        rows: list[list[str | None]] = pipe.execute()
        return rows

    def due_runs(self, now: float, limit: int) -> list[str]:
        """Open runs whose deadline is at or before ``now``, soonest first."""
        due: list[str] = self.r.zrangebyscore(  # type: ignore[assignment]
            self.keys.deadlines, "-inf", now, start=0, num=limit
        )
        return due

    def open_runs(self, limit: int = 500) -> list[str]:
        """Runs still open (in the deadlines index), soonest deadline first."""
        ids: list[str] = self.r.zrange(self.keys.deadlines, 0, limit - 1)  # type: ignore[assignment]
        return ids

    def forget_deadline(self, run_id: str) -> None:
        """Drop a run from the deadlines index (it ended, or its record expired)."""
        self.r.zrem(self.keys.deadlines, run_id)
