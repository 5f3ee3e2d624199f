"""Celery's prefork and threads pools, with one change: the messages of ``async def`` agents
and mergers run on the process's event loop (``workers/async_tasks.py``), not in a slot.

Sync agents keep what they had: a prefork slot is a process (a cancel interrupts it with a
signal, the grace killer ends one that ignores it), a threads slot a thread. Async agents run in
the worker's main process, up to ``ORCH_AIO__MAX_IN_FLIGHT`` at once, whatever ``--concurrency``
says; their messages come through a consumer of their own (``workers/guard.py``), whose prefetch
is that number, so sync queues keep a prefetch of their slots.

``workers/app.py`` makes ``Prefork`` the default pool (``celery worker`` without ``-P``, or
``-P prefork``); ``orchestrator worker --pool threads`` selects ``Threads``. Celery's own pools
still run async agents, one per slot (each waits for its coroutine on the process's loop).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from celery.concurrency.prefork import TaskPool as CeleryPrefork
from celery.concurrency.thread import TaskPool as CeleryThreads

log = logging.getLogger(__name__)

__all__ = ["POOLS", "Prefork", "Threads", "runs_async_here"]


def runs_async_here(pool: Any) -> bool:
    """Whether this pool runs async agents on the event loop (so they need no slot)."""
    return bool(getattr(pool, "runs_async", False))


class _AsyncOnTheLoop:
    """The change, as a mixin over a Celery pool."""

    runs_async = True
    app: Any

    def apply_async(self, target: Any, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        runner = getattr(self.app, "orch_async", None)
        if args and runner is not None and runner.handles(args[0]):
            return runner.apply(
                tuple(args), options.get("callback"), options.get("accept_callback")
            )
        return super().apply_async(target, args, kwargs, **options)  # type: ignore[misc]

    def terminate_job(self, pid: int, signal: Any = None) -> None:
        if pid == os.getpid():
            # revoke(terminate=True) of an async subagent: it runs in this very process, which
            # must not be killed for it. Our cancel (Run.cancel(), a race's loss) stops it at
            # its current await instead.
            log.warning(
                "terminate of an async subagent ignored (it runs in the worker's main process); "
                "cancel its run instead"
            )
            return
        super().terminate_job(pid, signal)  # type: ignore[misc]


class Prefork(_AsyncOnTheLoop, CeleryPrefork):  # type: ignore[misc]
    """Celery's prefork pool; async agents on the main process's event loop."""


class Threads(_AsyncOnTheLoop, CeleryThreads):  # type: ignore[misc]
    """Celery's threads pool; async agents on the process's event loop."""


#: ``orchestrator worker --pool`` names -> our pool classes (by Celery's "module:Class").
POOLS = {"prefork": "workers.pools:Prefork", "threads": "workers.pools:Threads"}
