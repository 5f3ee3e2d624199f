"""The asyncio API under its documented path (``orchestrator.aio.close_async()``); it lives in
:mod:`orchestrator.api.aio`, over :class:`workers.store.AsyncStore`."""

from orchestrator.api.aio import close_async, run_events, store_of, wait_async
from workers.store import Multiplexer

__all__ = ["Multiplexer", "close_async", "run_events", "store_of", "wait_async"]
