"""A run's event stream as typed models, and a blocking follower for the terminal (``watch``).

Every run has a capped, expiring Redis stream (``Keys.events``). Writers: the client and the
coordinator (submitted, preflight, queued, expanded), the workers' runtime and Lua scripts
(started, progress, finished, won, cancel_requested, merged) and whoever ends the run
(run_finished). A subtask that was cancelled or skipped shows as ``finished`` with that status.
Types this version does not know are kept, not refused: ``RunEvent.kind`` is then None.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from workers.store import RunStore


class EventType(StrEnum):
    """The event types written today (others may appear; see ``RunEvent.kind``)."""

    SUBMITTED = "submitted"  # the run record was created (n)
    PREFLIGHT = "preflight"  # the advisor's verdict (verdict, reasons)
    UNSERVED = "unserved"  # at submit, no live worker served these agents yet (agents: JSON)
    QUEUED = "queued"  # every subtask message was sent (n)
    EXPANDED = "expanded"  # the coordinator built and applied the canvas (n)
    STARTED = "started"  # a subtask began (index, worker, attempt)
    PROGRESS = "progress"  # an agent called ctx.progress (index, fraction, message)
    FINISHED = "finished"  # a subtask's envelope was recorded (index, status, won)
    WON = "won"  # a racer claimed the win (index, worker)
    CANCEL_REQUESTED = "cancel_requested"  # the run or some subtasks were asked to stop (reason)
    MERGED = "merged"  # the merger ran (merger, ok)
    QUORUM_REACHED = "quorum_reached"  # gather(early=True): the merger was sent (quorum)
    BUDGET_EXCEEDED = "budget_exceeded"  # the run's spend crossed its budget (tokens, cost_usd)
    THROTTLED = "throttled"  # a subtask's wait under rate limits ended (index, limit, waited_s)
    RETRY = "retry"  # a subtask's failed call will be tried again (index, retry, delay_s, status)
    RUN_FINISHED = "run_finished"  # the run ended (status); always the last event

    @property
    def subtask(self) -> bool:
        """True for events about one subtask (they carry ``index``)."""
        return self in (
            EventType.STARTED, EventType.PROGRESS, EventType.FINISHED, EventType.WON,
            EventType.THROTTLED, EventType.RETRY,
        )  # fmt: skip


#: Statuses of a ``finished`` event that mean the subtask was stopped rather than done.
STOPPED_STATUSES = frozenset({"cancelled", "skipped"})


class RunEvent(BaseModel):
    """One entry of a run's event stream."""

    id: str = Field(description="Stream entry id ('<ms>-<seq>'); resume after it.")
    run_id: str
    type: str = Field(description="Event type; see EventType for the known ones.")
    ts: float = Field(description="When it happened (Unix seconds, writer's clock).")
    index: int | None = Field(None, description="Subtask index, for subtask events.")
    status: str | None = Field(None, description="Subtask status (finished) or run status.")
    worker: str | None = None
    attempt: int | None = None
    n: int | None = Field(None, description="Number of subtasks (submitted, queued, expanded).")
    won: bool | None = Field(None, description="finished: this envelope claimed the race win.")
    fraction: float | None = Field(None, description="progress: 0..1.")
    message: str | None = None
    reason: str | None = Field(None, description="cancel_requested: why.")
    merger: str | None = None
    verdict: str | None = Field(None, description="preflight: the advisor's verdict.")
    tokens: int | None = Field(
        None,
        description="finished (when the envelope carried spend), budget_exceeded: the run's "
        "ledger after it, in tokens.",
    )
    cost_usd: float | None = Field(None, description="The same in dollars (0 while unpriced).")
    limit: str | None = Field(None, description="throttled: the limits' names (m+key:team-a).")
    waited_s: float | None = Field(None, description="throttled: how long the wait took.")
    retry: int | None = Field(None, description="retry: which retry (1, 2, ...).")
    delay_s: float | None = Field(None, description="retry: the wait before it.")
    data: dict[str, str] = Field(
        default_factory=dict, description="Every raw field, including ones not modelled here."
    )

    @property
    def kind(self) -> EventType | None:
        """The type as an EventType, or None for a type this version does not know."""
        try:
            return EventType(self.type)
        except ValueError:
            return None

    @property
    def final(self) -> bool:
        """True for the run's last event."""
        return self.type == EventType.RUN_FINISHED

    @property
    def stopped(self) -> bool:
        """True when a subtask finished cancelled or skipped (the 'subtask cancelled' event)."""
        return self.type == EventType.FINISHED and self.status in STOPPED_STATUSES


_INTS = ("index", "attempt", "n", "tokens", "retry")
_FLOATS = ("fraction", "cost_usd", "waited_s", "delay_s")
_TEXTS = ("status", "worker", "message", "reason", "merger", "verdict", "limit")


def parse_event(run_id: str, entry_id: str, fields: Mapping[str, Any]) -> RunEvent:
    """Build a RunEvent from one raw stream entry; malformed numbers become None, not errors."""
    raw = {_text(k): _text(v) for k, v in fields.items()}
    typed: dict[str, Any] = {
        "id": entry_id,
        "run_id": run_id,
        "type": raw.get("type", "unknown"),
        "ts": _number(raw.get("ts"), float) or 0.0,
        "data": raw,
    }
    for name in _INTS:
        typed[name] = _number(raw.get(name), int)
    for name in _FLOATS:
        typed[name] = _number(raw.get(name), float)
    for name in _TEXTS:
        typed[name] = raw.get(name)
    if "won" in raw:
        typed["won"] = raw["won"] in ("1", "true", "True")
    return RunEvent.model_validate(typed)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _number(value: str | None, kind: type[int] | type[float]) -> Any:
    if value is None:
        return None
    try:
        return kind(value) if kind is float else int(float(value))
    except ValueError:
        return None


def read_events(store: RunStore, run_id: str, since: str = "0-0") -> list[RunEvent]:
    """Every event after ``since`` that is in the stream now (no waiting)."""
    return [parse_event(run_id, i, f) for i, f in store.events_after(run_id, since)]


def follow_events(
    store: RunStore, run_id: str, *, since: str = "0-0", block_s: float = 0.5
) -> Iterator[list[RunEvent]]:
    """Yield batches of new events, blocking on Redis up to ``block_s`` per batch.

    An empty batch means nothing happened for ``block_s`` (a chance to redraw a clock). The
    caller stops iterating when it has seen the final event or lost patience.
    """
    for entries in store.follow_events(run_id, since=since, block_s=block_s):
        yield [parse_event(run_id, entry_id, fields) for entry_id, fields in entries]
