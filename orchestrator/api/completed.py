"""A run's envelopes in the order they finish: ``async for env in run.as_completed()`` and its
sync twin ``for env in run.iter_completed()``.

Both follow the run's event stream, where ``finish.lua`` appends a ``finished`` event in the
same script that records an envelope, so the stream's order is the finishing order; each
envelope is fetched once, when its event arrives (the sync reader fetches a whole XREAD's worth
in one HMGET). Waiting is a blocking read (XREAD BLOCK; for asyncio the loop's one shared read),
never a poll. The iteration ends with the run's ``run_finished`` event, after every envelope
reported by then was yielded: one a trimmed stream lost is fetched from the results hash then.
Subagents that never reported (skipped, or still being stopped when the run ended) are in
``run.wait().results``, not here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import TYPE_CHECKING, cast

from orchestrator.api.aio import LOST_CHECK_S, run_events, store_of
from orchestrator.api.host import RunHost
from orchestrator.api.live_envelopes import EVENTS_PER_READ, fresh_indices
from workers import ending
from workers.errors import RunLost, RunTimedOut
from workers.models import AgentResult
from workers.settings import safe_url
from workers.store import RunStore

if TYPE_CHECKING:
    from orchestrator.events import RunEvent

__all__ = ["as_completed", "iter_completed"]


def _timed_out(run_id: str, timeout_s: float | None, seen: int) -> RunTimedOut:
    return RunTimedOut(
        f"run {run_id}: {seen} envelopes yielded and the run still going after {timeout_s}s; "
        "it goes on: iterate again, or run.cancel()",
        run_id=run_id,
    )


def _missed(store: RunStore, run_id: str, seen: set[int]) -> list[AgentResult]:
    """Envelopes recorded before the end whose events the stream no longer holds."""
    if store.reported_count(run_id) <= len(seen):
        return []
    envs = [e for i, e in store.envelopes(run_id).items() if i not in seen]
    return sorted(envs, key=lambda e: (e.finished_at or 0.0, e.index))


def iter_completed(
    host: RunHost, run_id: str, timeout_s: float | None = None
) -> Iterator[AgentResult]:
    """Yield the run's envelopes as they finish; RunTimedOut after ``timeout_s`` in all."""
    store = host.store
    deadline_raw, n_raw = store.run_fields(run_id, ["deadline_at", "n"])
    deadline_at, n = float(deadline_raw or 0), int(n_raw or 0)
    limit = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
    have: dict[int, AgentResult] = {}
    cursor = "0-0"
    while True:
        left = limit - time.monotonic()
        if left <= 0:
            raise _timed_out(run_id, timeout_s, len(have))
        step = min(left, LOST_CHECK_S, deadline_at + ending.DEADLINE_GRACE_S - time.time() + 0.05)
        entries = store.read_events(run_id, cursor, count=EVENTS_PER_READ, block_s=max(step, 0.001))
        if entries:
            cursor = entries[-1][0]
            fresh = fresh_indices(entries, have, n)
            got = store.some_envelopes(run_id, fresh) if fresh else {}
            for i in fresh:  # in the stream's order: the finishing order
                if i in got and i not in have:
                    have[i] = got[i]
                    yield got[i]
            if any(fields.get("type") == "run_finished" for _, fields in entries):
                yield from _missed(store, run_id, set(have))
                return
        elif store.has_ended(run_id):  # its final event is gone (the stream was trimmed)
            yield from _missed(store, run_id, set(have))
            return
        elif not store.has_record(run_id):
            raise RunLost.of(run_id, safe_url(host.settings.redis_url()))
        elif ending.overdue(deadline_at, grace_s=ending.DEADLINE_GRACE_S):
            ending.expire(store, host.revoke, run_id)  # its coordinator may be gone


async def as_completed(
    host: RunHost, run_id: str, timeout_s: float | None = None
) -> AsyncIterator[AgentResult]:
    """:func:`iter_completed` for asyncio (through the loop's shared blocked read)."""
    store = store_of(host)
    _, n = await store.deadline_and_width(run_id)
    loop = asyncio.get_running_loop()
    limit = loop.time() + timeout_s if timeout_s is not None else float("inf")
    seen: set[int] = set()
    # run_events is an async generator: closed here, it drops its subscription at once.
    events = cast("AsyncGenerator[RunEvent, None]", run_events(host, run_id))
    try:
        while True:
            left = limit - loop.time()
            if left <= 0:
                raise _timed_out(run_id, timeout_s, len(seen))
            try:
                if timeout_s is None:
                    event = await anext(events)
                else:
                    event = await asyncio.wait_for(anext(events), left)
            except TimeoutError:
                raise _timed_out(run_id, timeout_s, len(seen)) from None
            except StopAsyncIteration:
                return  # the stream lost its tail: nothing more comes
            if event.type == "finished" and event.index is not None and 0 <= event.index < n:
                if event.index in seen:
                    continue
                got = await store.some_envelopes(run_id, [event.index])
                if event.index in got:
                    seen.add(event.index)
                    yield got[event.index]
            elif event.final:
                for env in await asyncio.to_thread(_missed, host.store, run_id, seen):
                    yield env
                return
    finally:
        await events.aclose()
