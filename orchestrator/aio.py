"""The asyncio API: submit orchestrations and await hundreds of them from one event loop.

Celery has no awaitable result; this one is real and cheap: waiting goes through the loop's
:class:`~orchestrator.multiplexer.Multiplexer` (one blocked XREAD for every awaited run; no
thread and no connection per run). Submitting reuses the synchronous validation; only the
catalog check, the run record and the send (kombu is synchronous) run in the loop's default
thread executor. ``Orchestrator.*_async``, ``Run.wait_async`` and ``Run.events`` delegate here.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.events import RunEvent, parse_event
from orchestrator.feed import COALESCE_S, FEED_MIN_N, AsyncEnvelopeFeed
from orchestrator.multiplexer import (
    ERRORS,
    Multiplexer,
    Subscription,
    close_async,
    multiplexer,
    unavailable,
)
from workers.errors import BrokerUnavailable, RunNotFound, RunTimedOut
from workers.keys import Keys
from workers.models import RunResult
from workers.results import RESULT_SCRIPT, assemble_result, result_args

if TYPE_CHECKING:
    from orchestrator.client import Orchestrator
    from orchestrator.request import OrchestrationRequest
    from orchestrator.runs import Run

__all__ = [
    "Multiplexer",
    "close_async",
    "multiplexer",
    "run_events",
    "submit_async",
    "wait_async",
]

T = TypeVar("T")


# -- the API behind Orchestrator.*_async and Run.wait_async / Run.events ----------------------
async def _in_thread(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def submit_async(orch: Orchestrator, req: OrchestrationRequest) -> Run:
    """``Orchestrator.submit`` without blocking the loop: the catalog check, the run record and
    the send run in the default executor; the request was already validated by the caller."""
    # Build the Celery app and its producer pool here, once: their lazy creation is not
    # thread-safe, and many submits may run in executor threads at the same time.
    orch.app.amqp.producer_pool  # noqa: B018
    return await _in_thread(orch.submit, req)


async def _deadline_at(mux: Multiplexer, keys: Keys, run_id: str) -> tuple[float, int]:
    """The run's deadline and width, or RunNotFound."""
    deadline_at, n = await mux.hmget(keys.run(run_id), ["deadline_at", "n"])
    if deadline_at is None:
        raise RunNotFound.under(run_id, keys.prefix)
    return float(deadline_at), int(n or 0)


async def _expire(run: Run) -> None:
    from orchestrator.runs import expire_run

    try:
        await _in_thread(expire_run, run.orch.store, run.orch.revoke, run.id)
    except ERRORS as exc:
        raise unavailable(run.orch.settings.redis_url(), exc) from exc


async def wait_async(run: Run, timeout_s: float | None = None) -> RunResult:
    """Await the run's result; RunTimedOut if ``timeout_s`` passes first (the run goes on).

    Like ``Run.wait``, a state Redis that restarts or fails over is waited out within
    ``timeout_s``; BrokerUnavailable once that has passed.
    """
    from orchestrator.runs import DEADLINE_GRACE_S

    keys = run.orch.store.keys
    mux = multiplexer(run.orch)
    loop = asyncio.get_running_loop()
    limit = loop.time() + timeout_s if timeout_s is not None else math.inf
    deadline_at, n = await _deadline_at(mux, keys, run.id)
    store = run.orch.store
    # A wide run's envelopes are read while it runs (orchestrator/feed.py).
    feed = AsyncEnvelopeFeed(mux, store, run.id, n) if n >= FEED_MIN_N else None
    sub: Subscription | None = None
    try:
        while True:
            try:
                have = feed.have if feed else None
                args, missing = result_args(have, n)
                reply = await mux.script(RESULT_SCRIPT, store.result_keys(run.id), args)
                if reply is not None:
                    result = assemble_result(reply, have, missing)
                    if result is not None:
                        return result
                now = time.time()
                if now > deadline_at + DEADLINE_GRACE_S:
                    # The coordinator should have ended it; it may be gone. End it from here.
                    await _expire(run)
                    continue
                remaining = limit - loop.time()
                if remaining <= 0:
                    status = await mux.hget(keys.run(run.id), "status")
                    raise RunTimedOut(
                        f"run {run.id} still {status} after {timeout_s}s of waiting; it goes "
                        "on: wait again, or run.cancel()",
                        run_id=run.id,
                    )
                if sub is None:
                    sub = await mux.subscribe(keys.done(run.id))
                step = min(remaining, deadline_at + DEADLINE_GRACE_S - now + 0.05)
                if feed is None:
                    await mux.next_entries(sub, step)
                elif await mux.next_entries(sub, min(step, COALESCE_S)) is None:
                    await feed.read()
            except BrokerUnavailable:
                if loop.time() >= limit:
                    raise
                await asyncio.sleep(min(0.2, max(0.0, limit - loop.time())))
    finally:
        if sub is not None:
            mux.unsubscribe(sub)


async def run_events(run: Run, *, since: str = "0-0") -> AsyncIterator[RunEvent]:
    """Every event of the run after ``since`` (default: from the start), live, ending with
    ``run_finished``."""
    from orchestrator.runs import DEADLINE_GRACE_S

    keys = run.orch.store.keys
    mux = multiplexer(run.orch)
    deadline_at, _ = await _deadline_at(mux, keys, run.id)
    sub = await mux.subscribe(keys.events(run.id), since)
    try:
        while True:
            entries = await mux.next_entries(
                sub, max(0.05, deadline_at + DEADLINE_GRACE_S - time.time())
            )
            if entries is None:
                # Past the deadline with no news: end the run if nobody did, or pick up what
                # the read in flight has not delivered yet (the final event included).
                if await mux.get(keys.result(run.id)) is None:
                    await _expire(run)
                    continue
                entries = await mux.xrange_after(sub.key, sub.cursor)
                if not entries:
                    return  # the stream lost its tail (trimmed or expired): nothing more comes
                sub.cursor = entries[-1][0]
            for entry_id, fields in entries:
                event = parse_event(run.id, entry_id, fields)
                yield event
                if event.final:
                    return
    finally:
        mux.unsubscribe(sub)
