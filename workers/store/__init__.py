"""The store owns Redis: every read and write of orchestration state goes through it.

Synchronous code holds a :class:`RunStore`; asyncio code an :class:`AsyncStore` over the
event loop's :class:`Multiplexer` (one blocked XREAD for every awaited stream).
"""

from workers.store.aio import AsyncStore, AsyncSubtasks, async_store, close_async
from workers.store.client import RETRIES, answers, make_store, redis_client, store_at
from workers.store.dead_letters import DeadLetter, DeadLetterReport
from workers.store.multiplexer import (
    CONNECTION_ERRORS,
    ERRORS,
    Multiplexer,
    Subscription,
    multiplexer,
)
from workers.store.records import stream_entries
from workers.store.run_store import RunStore
from workers.store.service import RecoveryView
from workers.store.subtasks import NO_SPEND, CancelFeed, FinishOutcome

__all__ = [
    "CONNECTION_ERRORS",
    "ERRORS",
    "NO_SPEND",
    "RETRIES",
    "AsyncStore",
    "AsyncSubtasks",
    "CancelFeed",
    "DeadLetter",
    "DeadLetterReport",
    "FinishOutcome",
    "Multiplexer",
    "RecoveryView",
    "RunStore",
    "Subscription",
    "answers",
    "async_store",
    "close_async",
    "make_store",
    "multiplexer",
    "redis_client",
    "store_at",
    "stream_entries",
]
