"""Subtasks: their start and their envelope (once per index), and the stop flags they obey."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.ledger import SpendDelta
from workers.models import AgentResult, RunStatus
from workers.names import indices as fields_of
from workers.run_result import finish_args
from workers.scripts import FINISH, SPEND, START
from workers.stats import Sample, agent_sample
from workers.store.base import StoreBase
from workers.stored_result import parse_envelopes

#: No spend to add.
NO_SPEND = SpendDelta()


@dataclass(frozen=True)
class FinishOutcome:
    """What recording one envelope changed."""

    new: bool
    done: int
    n: int
    won: bool
    #: Its spend took the run over its budget (the caller stops the run).
    crossed: bool = False
    #: It completed a gather's early quorum (the caller stops the rest and sends the merger).
    quorum: bool = False


def started(reply: Any) -> tuple[int, str]:
    """start.lua's reply: (attempt, reason not to run or '')."""
    attempt, reason = reply
    return int(attempt), str(reason)


def finished(reply: Any) -> FinishOutcome:
    """finish.lua's reply."""
    new, done, n, won, crossed, quorum = reply
    return FinishOutcome(
        new=bool(new),
        done=int(done),
        n=int(n),
        won=bool(won),
        crossed=bool(crossed),
        quorum=bool(quorum),
    )


class CancelFeed:
    """The cancel channel as one worker process reads it (pub/sub, reconnected by the caller)."""

    def __init__(self, store: StoreBase) -> None:
        self._pubsub = store.r.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        self._pubsub.subscribe(store.keys.cancel_channel)

    def next_message(self, timeout_s: float) -> dict[str, Any] | None:
        """The next cancel message, or None after ``timeout_s``."""
        message = self._pubsub.get_message(timeout=timeout_s)
        if message and message.get("type") == "message":
            return json.loads(message["data"])  # type: ignore[no-any-return]
        return None

    def close(self) -> None:
        """Drop the subscription."""
        self._pubsub.close()


class SubtaskStore(StoreBase):
    """Starting and finishing subtasks; cancel flags."""

    def start_call(self, run_id: str, index: int, worker: str) -> tuple[list[str], list[Any]]:
        """start.lua's keys and arguments (the sync and asyncio stores run the same call)."""
        k = self.keys
        keys = [
            k.run(run_id),
            k.attempts(run_id),
            k.cancel(run_id),
            k.task_cancel(run_id),
            k.events(run_id),
            k.results(run_id),
            k.started_by(run_id),
        ]
        return keys, [index, repr(time.time()), worker, self.ttl_s, self.maxlen]

    def start_task(self, run_id: str, index: int, worker: str) -> tuple[int, str]:
        """Count the attempt and return (attempt, reason not to run or '')."""
        keys, args = self.start_call(run_id, index, worker)
        return started(START(self.r, keys=keys, args=args))

    def finish_call(
        self,
        run_id: str,
        env: AgentResult,
        *,
        claim: bool,
        stats: Sequence[Sample] = (),
        spend: SpendDelta = NO_SPEND,
    ) -> tuple[list[str], list[Any]]:
        """finish.lua's keys and arguments.

        The agent's duration sample (and any extra ``stats``, e.g. its validator's time) is
        appended in the same script, so statistics cost no extra round trip.
        """
        k = self.keys
        own = agent_sample(env)
        samples = [own, *stats] if own is not None else list(stats)
        keys = [
            k.results(run_id),
            k.run(run_id),
            k.events(run_id),
            k.winner(run_id),
            k.stats_counts,
            *[k.stats(name) for name, _ in samples],
        ]
        args = [
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
            *spend.args(),
            *[text for _, text in samples],
        ]
        return keys, args

    def finish_task(
        self,
        run_id: str,
        env: AgentResult,
        *,
        claim: bool,
        stats: Sequence[Sample] = (),
        spend: SpendDelta = NO_SPEND,
    ) -> FinishOutcome:
        """Record the envelope once; with claim, try to win the race; add the spend not yet in
        the run's ledger (see finish_call)."""
        keys, args = self.finish_call(run_id, env, claim=claim, stats=stats, spend=spend)
        return finished(FINISH(self.r, keys=keys, args=args))

    def spend_call(self, run_id: str, spend: SpendDelta) -> tuple[list[str], list[Any]]:
        """spend.lua's keys and arguments."""
        k = self.keys
        args = [*spend.args(), repr(time.time()), self.ttl_s, self.maxlen]
        return [k.run(run_id), k.events(run_id)], args

    def add_spend(self, run_id: str, spend: SpendDelta) -> bool:
        """Add a running subagent's spend to the run's ledger; True if it crossed the run's
        budget (exactly one caller sees True: it stops the run)."""
        keys, args = self.spend_call(run_id, spend)
        return bool(SPEND(self.r, keys=keys, args=args))

    def envelope(self, run_id: str, index: int) -> AgentResult | None:
        """The recorded envelope of one subtask."""
        raw = self.r.hget(self.keys.results(run_id), str(index))
        return AgentResult.model_validate_json(raw) if raw else None

    def some_envelopes(self, run_id: str, indices: list[int]) -> dict[int, AgentResult]:
        """The recorded envelopes of these subtasks (parsed in one call)."""
        raw: list[str | None] = self.r.hmget(self.keys.results(run_id), fields_of(indices))  # type: ignore[assignment]
        return parse_envelopes([v for v in raw if v is not None])

    def envelopes(self, run_id: str) -> dict[int, AgentResult]:
        """Every recorded envelope by index."""
        raw: dict[str, str] = self.r.hgetall(self.keys.results(run_id))  # type: ignore[assignment]
        return {int(i): AgentResult.model_validate_json(v) for i, v in raw.items()}

    def reported_count(self, run_id: str) -> int:
        """How many subtasks have an envelope."""
        return int(self.r.hlen(self.keys.results(run_id)))

    def started_by(self, run_id: str) -> dict[int, str]:
        """Subtask index -> the worker that last started it."""
        raw: dict[str, str] = self.r.hgetall(self.keys.started_by(run_id))  # type: ignore[assignment]
        return {int(i): w for i, w in raw.items()}

    def unreported(self, run_id: str) -> tuple[set[int], dict[int, str]]:
        """(indices reported, index -> worker that started it), one round trip."""
        pipe = self.pipeline()
        pipe.hkeys(self.keys.results(run_id))
        pipe.hgetall(self.keys.started_by(run_id))
        reported, started = pipe.execute()
        return {int(i) for i in reported}, {int(i): w for i, w in started.items()}

    def winner(self, run_id: str) -> int | None:
        """The index that won a race, if one has."""
        raw = self.r.get(self.keys.winner(run_id))
        return int(raw) if raw is not None else None

    # -- stop flags ------------------------------------------------------------------------
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

        The flag is what queued subtasks see when they start; the message interrupts running
        ones. ``event``: an event to append first, in the same round trip (a race's 'won').
        Call it through :mod:`workers.ending`, which decides how a run ends.
        """
        now = time.time()
        k = self.keys
        pipe = self.pipeline()
        if event is not None:
            pipe.xadd(
                k.events(run_id), {**event, "ts": repr(now)}, maxlen=self.maxlen, approximate=True
            )
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
        self.keep(pipe, k.run(run_id), k.events(run_id))
        pipe.execute()
        return now

    def cancel_reason(self, run_id: str, index: int) -> str | None:
        """Why this subtask should stop, if it should."""
        return self.stop_flags([(run_id, index)])[0][0]

    def stop_flags(self, items: Sequence[tuple[str, int]]) -> list[tuple[str | None, int | None]]:
        """For each (run, index): why it should stop (or None) and the race's winner (or None),
        one round trip for them all and three commands per run, not per subtask (a process
        holds a thousand async subagents of one run)."""
        if not items:
            return []
        k = self.keys
        by_run: dict[str, list[int]] = {}
        for run_id, index in items:
            by_run.setdefault(run_id, []).append(index)
        pipe = self.pipeline()
        for run_id, indices in by_run.items():
            pipe.get(k.cancel(run_id))
            pipe.get(k.winner(run_id))
            pipe.hmget(k.task_cancel(run_id), fields_of(indices))
        replies = pipe.execute()
        flags: dict[tuple[str, int], tuple[str | None, int | None]] = {}
        for n, (run_id, indices) in enumerate(by_run.items()):
            run_reason, winner, task_reasons = replies[3 * n : 3 * n + 3]
            for index, task_reason in zip(indices, task_reasons, strict=True):
                reason = task_reason or run_reason
                flags[(run_id, index)] = (
                    str(reason) if reason else None,
                    int(winner) if winner else None,
                )
        return [flags[item] for item in items]

    def cancel_requested_at(self, run_id: str) -> float | None:
        """When a stop of the whole run was first requested."""
        raw = self.r.hget(self.keys.run(run_id), "cancel_requested_at")
        return float(raw) if raw else None

    def cancel_feed(self) -> CancelFeed:
        """A subscription to the cancel channel."""
        return CancelFeed(self)

    def batch_progress(
        self, batches: Sequence[tuple[str, list[int]]]
    ) -> list[tuple[list[Any], list[Any]]]:
        """For each (run, indices) of a batch message: the attempts and envelopes of its items
        (the item running is the first started and not reported)."""
        k = self.keys
        pipe = self.pipeline()
        for run_id, idx in batches:
            pipe.hmget(k.attempts(run_id), fields_of(idx))
            pipe.hmget(k.results(run_id), fields_of(idx))
        replies = pipe.execute()
        return [(replies[2 * n], replies[2 * n + 1]) for n in range(len(batches))]

    def merge_inputs(self, run_id: str, started_at: float) -> tuple[bool, dict[int, AgentResult]]:
        """(run ended already?, every envelope), recording when the merge started; one round
        trip."""
        k = self.keys
        pipe = self.pipeline()
        pipe.exists(k.result(run_id))
        pipe.hset(k.run(run_id), "merge_started_at", repr(started_at))
        pipe.hgetall(k.results(run_id))
        self.keep(pipe, k.run(run_id))
        ended, _, raw, _ = pipe.execute()
        return bool(ended), {int(i): AgentResult.model_validate_json(v) for i, v in raw.items()}
