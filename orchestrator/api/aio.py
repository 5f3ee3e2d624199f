"""The asyncio API: submit orchestrations and await hundreds of them from one event loop.

Celery has no awaitable result; this one is real and cheap: waiting goes through the loop's
:class:`~workers.store.AsyncStore` (one blocked XREAD for every awaited run; no thread and no
connection per run). Submitting reuses the synchronous validation; only the catalog check, the
run record and the send (kombu is synchronous) run in the loop's default thread executor.
``Orchestrator.*_async``, ``Run.wait_async`` and ``Run.events`` delegate here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from orchestrator.api.host import RunHost
from orchestrator.api.live_envelopes import COALESCE_S, LIVE_MIN_N, AsyncLiveEnvelopes
from orchestrator.events import RunEvent, parse_event
from workers import ending
from workers.errors import BrokerUnavailable, RunTimedOut
from workers.models import RunResult
from workers.store import ERRORS, AsyncStore, Subscription, async_store, close_async
from workers.store.multiplexer import unavailable

__all__ = ["close_async", "in_thread", "run_events", "store_of", "wait_async"]

T = TypeVar("T")


async def in_thread(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking call in the loop's default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def store_of(host: RunHost) -> AsyncStore:
    """The running loop's store for this host's state Redis."""
    return async_store(host.settings.redis_url(), host.store.keys.prefix)


async def _expire(host: RunHost, run_id: str) -> None:
    try:
        await in_thread(ending.expire, host.store, host.revoke, run_id)
    except ERRORS as exc:
        raise unavailable(host.settings.redis_url(), exc) from exc


async def wait_async(host: RunHost, run_id: str, timeout_s: float | None = None) -> RunResult:
    """Await the run's result; RunTimedOut if ``timeout_s`` passes first (the run goes on).

    Like ``Run.wait``, a state Redis that restarts or fails over is waited out within
    ``timeout_s``; BrokerUnavailable once that has passed.
    """
    store = store_of(host)
    loop = asyncio.get_running_loop()
    limit = loop.time() + timeout_s if timeout_s is not None else math.inf
    deadline_at, n = await store.deadline_and_width(run_id)
    # A wide run's envelopes are read while it runs (orchestrator/api/live_envelopes.py).
    live = AsyncLiveEnvelopes(store, run_id, n) if n >= LIVE_MIN_N else None
    sub: Subscription | None = None
    try:
        while True:
            try:
                result = await store.result(run_id, live.have if live else None, n)
                if result is not None:
                    return result
                if ending.overdue(deadline_at, grace_s=ending.DEADLINE_GRACE_S):
                    # The coordinator should have ended it; it may be gone. End it from here.
                    await _expire(host, run_id)
                    continue
                remaining = limit - loop.time()
                if remaining <= 0:
                    status = await store.status(run_id)
                    raise RunTimedOut(
                        f"run {run_id} still {status} after {timeout_s}s of waiting; it goes "
                        "on: wait again, or run.cancel()",
                        run_id=run_id,
                    )
                sub = sub or await store.subscribe_done(run_id)
                await _next(store, sub, live, remaining, deadline_at)
            except BrokerUnavailable:
                if loop.time() >= limit:
                    raise
                await asyncio.sleep(min(0.2, max(0.0, limit - loop.time())))
    finally:
        if sub is not None:
            store.unsubscribe(sub)


async def _next(
    store: AsyncStore,
    sub: Subscription,
    live: AsyncLiveEnvelopes | None,
    remaining: float,
    deadline_at: float,
) -> None:
    """Wait for the end (or the deadline's grace, or the caller's limit); a wide run reads
    the envelopes that arrived meanwhile."""
    step = min(remaining, deadline_at + ending.DEADLINE_GRACE_S - time.time() + 0.05)
    if live is None:
        await store.next_entries(sub, step)
    elif await store.next_entries(sub, min(step, COALESCE_S)) is None:
        await live.read()


async def run_events(host: RunHost, run_id: str, *, since: str = "0-0") -> AsyncIterator[RunEvent]:
    """Every event of the run after ``since`` (default: from the start), live, ending with
    ``run_finished``."""
    store = store_of(host)
    deadline_at, _ = await store.deadline_and_width(run_id)
    sub = await store.subscribe_events(run_id, since)
    try:
        while True:
            entries = await store.next_entries(
                sub, max(0.05, deadline_at + ending.DEADLINE_GRACE_S - time.time())
            )
            if entries is None:
                # Past the deadline with no news: end the run if nobody did, or pick up what
                # the read in flight has not delivered yet (the final event included).
                if not await store.has_ended(run_id):
                    await _expire(host, run_id)
                    continue
                entries = await store.events_after(run_id, sub.cursor)
                if not entries:
                    return  # the stream lost its tail (trimmed or expired): nothing more comes
                sub.cursor = entries[-1][0]
            for entry_id, fields in entries:
                event = parse_event(run_id, entry_id, fields)
                yield event
                if event.final:
                    return
    finally:
        store.unsubscribe(sub)
