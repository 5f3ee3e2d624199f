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
from workers.errors import BrokerUnavailable, RunLost, RunTimedOut
from workers.models import RunResult
from workers.settings import safe_url
from workers.store import ERRORS, AsyncStore, Subscription, async_store, close_async
from workers.store.multiplexer import RECONNECT_S, Entry, unavailable
from workers.store.timeouts import replies_within

__all__ = [
    "LOST_CHECK_S",
    "REPLY_MARGIN_S",
    "close_async",
    "in_thread",
    "run_events",
    "store_of",
    "wait_async",
]

T = TypeVar("T")
#: Longest a waiter blocks without checking that the state server still knows the run (one
#: HEXISTS or HGET): a server restarted without persistence, or flushed, forgets it silently.
LOST_CHECK_S = 5.0
#: Room after a wait's own limit for the replies it reads as it gives up (the status for its
#: RunTimedOut): a frozen server costs the caller this much more, never a hang.
REPLY_MARGIN_S = 0.5


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
    ``timeout_s``; BrokerUnavailable once that has passed (a frozen server included: no
    command outlasts the limit); RunLost when the server forgot the run meanwhile.
    """
    margin = None if timeout_s is None else max(timeout_s, 0.0) + REPLY_MARGIN_S
    with replies_within(margin):
        return await _wait(host, run_id, timeout_s)


async def _wait(host: RunHost, run_id: str, timeout_s: float | None) -> RunResult:
    store = store_of(host)
    loop = asyncio.get_running_loop()
    limit = loop.time() + timeout_s if timeout_s is not None else math.inf
    deadline_at, n = await store.deadline_and_width(run_id)
    # A wide run's envelopes are read while it runs (orchestrator/api/live_envelopes.py).
    live = AsyncLiveEnvelopes(store, run_id, n) if n >= LIVE_MIN_N else None
    sub: Subscription | None = None
    check_at = loop.time() + LOST_CHECK_S  # the record was there a moment ago
    try:
        while True:
            try:
                result = await store.result(run_id, live.have if live else None, n)
                if result is not None:
                    return result
                if loop.time() >= check_at:
                    if not await store.has_record(run_id):
                        raise _lost(host, run_id)
                    check_at = loop.time() + LOST_CHECK_S
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
                check_at = loop.time()  # a restart may have lost the run: look once it is back
                await asyncio.sleep(min(0.2, max(0.0, limit - loop.time())))
    finally:
        if sub is not None:
            store.unsubscribe(sub)


def _lost(host: RunHost, run_id: str) -> RunLost:
    return RunLost.of(run_id, safe_url(host.settings.redis_url()))


async def _next(
    store: AsyncStore,
    sub: Subscription,
    live: AsyncLiveEnvelopes | None,
    remaining: float,
    deadline_at: float,
) -> None:
    """Wait for the end (or the deadline's grace, the caller's limit, or the next check that
    the run is still known); a wide run reads the envelopes that arrived meanwhile."""
    step = min(remaining, deadline_at + ending.DEADLINE_GRACE_S - time.time() + 0.05, LOST_CHECK_S)
    if live is None:
        await store.next_entries(sub, step)
    elif await store.next_entries(sub, min(step, COALESCE_S)) is None:
        await live.read()


async def run_events(host: RunHost, run_id: str, *, since: str = "0-0") -> AsyncIterator[RunEvent]:
    """Every event of the run after ``since`` (default: from the start), live, ending with
    ``run_finished``; RunLost when the state server forgets the run meanwhile."""
    store = store_of(host)
    deadline_at, _ = await store.deadline_and_width(run_id)
    sub = await store.subscribe_events(run_id, since)
    try:
        while True:
            entries = await _next_events(host, store, run_id, sub, deadline_at)
            if entries is None:
                # No news for a while: end the run if it is overdue and nobody did, or pick up
                # what the read in flight has not delivered yet (the final event included).
                if not await store.has_ended(run_id):
                    if not await store.has_record(run_id):
                        raise _lost(host, run_id)
                    if ending.overdue(deadline_at, grace_s=ending.DEADLINE_GRACE_S):
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


async def _next_events(
    host: RunHost, store: AsyncStore, run_id: str, sub: Subscription, deadline_at: float
) -> list[Entry] | None:
    """The next events, or None after a while without any (at most LOST_CHECK_S, so that a run
    the server forgot is noticed). A connection lost on the way is ridden out when the server
    answers again and still knows the run (RunLost when it does not)."""
    step = min(LOST_CHECK_S, max(0.05, deadline_at + ending.DEADLINE_GRACE_S - time.time()))
    try:
        return await store.next_entries(sub, step)
    except BrokerUnavailable:
        give_up = time.monotonic() + host.settings.client_timeout_s
        while True:
            await asyncio.sleep(RECONNECT_S)  # what the reader waits before it reads again
            try:
                known = await store.has_record(run_id)
            except BrokerUnavailable:
                if time.monotonic() >= give_up:
                    raise
                continue
            if not known:
                raise _lost(host, run_id) from None
            return []
