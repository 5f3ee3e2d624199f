"""The store for asyncio code: the reads a waiter needs, through the loop's multiplexer."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from workers.errors import RunNotFound
from workers.ledger import SpendDelta
from workers.models import AgentResult, RunResult
from workers.names import indices as fields_of
from workers.scripts import FINISH, RESULT, SPEND, START
from workers.stats import Sample
from workers.store.base import flat
from workers.store.multiplexer import Entry, Multiplexer, Subscription, close_async, multiplexer
from workers.store.run_store import RunStore
from workers.store.subtasks import NO_SPEND, FinishOutcome, finished, started
from workers.stored_result import assemble_result, parse_envelopes, result_args

__all__ = ["AsyncStore", "AsyncSubtasks", "async_store", "close_async"]


class AsyncStore:
    """Run reads for one event loop (no thread and no connection per awaited run)."""

    def __init__(self, mux: Multiplexer) -> None:
        self.mux = mux
        self.keys = mux.keys

    async def deadline_and_width(self, run_id: str) -> tuple[float, int]:
        """The run's deadline (epoch s) and width, or RunNotFound."""
        deadline_at, n = await self.mux.hmget(self.keys.run(run_id), ["deadline_at", "n"])
        if deadline_at is None:
            raise RunNotFound.under(run_id, self.keys.prefix)
        return float(deadline_at), int(n or 0)

    async def has_record(self, run_id: str) -> bool:
        """Whether the run's record is the one it was created with (see RunStore.has_record)."""
        return await self.mux.hget(self.keys.run(run_id), "run_id") is not None

    async def status(self, run_id: str) -> str | None:
        """The run record's status field."""
        return await self.mux.hget(self.keys.run(run_id), "status")

    async def has_ended(self, run_id: str) -> bool:
        """Whether the final result is stored."""
        return await self.mux.get(self.keys.result(run_id)) is not None

    async def result(
        self, run_id: str, have: dict[int, AgentResult] | None = None, n: int = 0
    ) -> RunResult | None:
        """The final result once the run has ended (``have``: envelopes already read)."""
        args, missing = result_args(have, n)
        k = self.keys
        keys = [k.result(run_id), k.run(run_id), k.results(run_id)]
        reply = await self.mux.script(RESULT, keys, args)
        return assemble_result(reply, have, missing) if reply is not None else None

    async def subscribe_done(self, run_id: str) -> Subscription:
        """Be told when the run ends."""
        return await self.mux.subscribe(self.keys.done(run_id))

    async def subscribe_events(self, run_id: str, since: str = "0-0") -> Subscription:
        """Receive the run's events after ``since``."""
        return await self.mux.subscribe(self.keys.events(run_id), since)

    async def next_entries(self, sub: Subscription, timeout_s: float) -> list[Entry] | None:
        """The next entries of a subscription, or None after ``timeout_s``."""
        return await self.mux.next_entries(sub, timeout_s)

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop receiving (safe to call twice)."""
        self.mux.unsubscribe(sub)

    async def events_after(self, run_id: str, cursor: str) -> list[Entry]:
        """The run's events after ``cursor``, no waiting."""
        return await self.mux.xrange_after(self.keys.events(run_id), cursor)

    async def some_envelopes(self, run_id: str, indices: list[int]) -> dict[int, AgentResult]:
        """The recorded envelopes of these subtasks."""
        raws = await self.mux.hmget(self.keys.results(run_id), fields_of(indices))
        return parse_envelopes([r for r in raws if r is not None])


class AsyncSubtasks:
    """A worker's subtask calls from its event loop: the very scripts and arguments of the
    synchronous store (``store``), sent through the loop's multiplexer, so a thousand subagents
    in flight wait on Redis without a thread each."""

    def __init__(self, mux: Multiplexer, store: RunStore) -> None:
        self.mux = mux
        self.store = store

    async def start_task(self, run_id: str, index: int, worker: str) -> tuple[int, str]:
        """See RunStore.start_task."""
        keys, args = self.store.start_call(run_id, index, worker)
        return started(await self.mux.script(START, keys, args))

    async def finish_task(
        self,
        run_id: str,
        env: AgentResult,
        *,
        claim: bool,
        stats: Sequence[Sample] = (),
        spend: SpendDelta = NO_SPEND,
    ) -> FinishOutcome:
        """See RunStore.finish_task."""
        keys, args = self.store.finish_call(run_id, env, claim=claim, stats=stats, spend=spend)
        return finished(await self.mux.script(FINISH, keys, args))

    async def add_spend(self, run_id: str, spend: SpendDelta) -> bool:
        """See RunStore.add_spend."""
        keys, args = self.store.spend_call(run_id, spend)
        return bool(await self.mux.script(SPEND, keys, args))

    async def run_field(self, run_id: str, name: str) -> str | None:
        """One field of the run record (None: not set, or no record)."""
        return await self.mux.hget(self.store.keys.run(run_id), name)

    async def event(self, run_id: str, kind: str, **fields: Any) -> None:
        """See RunStore.event."""
        data = {"type": kind, "ts": repr(time.time()), **flat(fields)}
        await self.mux.append(
            self.store.keys.events(run_id), data, self.store.maxlen, self.store.ttl_s
        )


def async_store(url: str, prefix: str) -> AsyncStore:
    """The running loop's store for this state Redis and key prefix."""
    return AsyncStore(multiplexer(url, prefix))
