"""A hedged race's turns: racer i may start only ``i * hedge_after_s`` after the run was sent,
and only if no valid result has arrived by then.

Every racer is sent at once; a racer whose turn has not come waits in the worker that took
it, registered with the cancel listener, so the win (or a cancel, or the deadline) wakes it at
once. It then goes through ``start.lua`` like any subtask: a decided race has its cancel flag
set, so the racer is recorded ``skipped`` without calling its agent. Nothing is sent later by
anybody: no ETA message held unacknowledged by a worker (which kombu's Redis transport would
redeliver after the visibility timeout, and which counts against the prefetch), no timer in a
coordinator or client that may die. The cost: a sync racer holds its pool slot while it waits
(at most ``(n-1) * hedge_after_s``); an async one waits on the event loop and takes no slot.
"""

from __future__ import annotations

import asyncio
import time

from workers.errors import TaskCancelled
from workers.models import TaskMeta
from workers.services import Services

__all__ = ["turn_in_s", "wait_turn", "wait_turn_async"]


def turn_in_s(meta: TaskMeta, index: int, now: float | None = None) -> float:
    """Seconds until racer ``index`` may start (0 or less: now), never past the deadline."""
    if not meta.hedge_after_s or index <= 0:
        return 0.0
    now = time.time() if now is None else now
    return min(meta.queued_at + index * meta.hedge_after_s, meta.deadline_at) - now


def wait_turn(services: Services, run_id: str, index: int, task_id: str, meta: TaskMeta) -> None:
    """Block this pool slot until the racer's turn, or until the race is stopped."""
    wait_s = turn_in_s(meta, index)
    if wait_s <= 0:
        return
    with services.listener.track(run_id, index, task_id) as item:
        # A stop published before the listener knew this racer is in the flag.
        if services.store.cancel_reason(run_id, index):
            return
        item.cancelled.wait(turn_in_s(meta, index))


async def wait_turn_async(
    services: Services, run_id: str, index: int, task_id: str, meta: TaskMeta
) -> None:
    """Await the racer's turn on the event loop; a stop ends the wait at once."""
    wait_s = turn_in_s(meta, index)
    if wait_s <= 0:
        return
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()

    def wake() -> None:  # the listener's thread
        loop.call_soon_threadsafe(woken.set)

    with services.listener.track_async(run_id, index, task_id, wake) as item:
        try:
            services.listener.enter(item)
        except TaskCancelled:
            return
        try:
            if await asyncio.to_thread(services.store.cancel_reason, run_id, index):
                return
            await asyncio.wait_for(woken.wait(), max(0.0, turn_in_s(meta, index)))
        except TimeoutError:
            pass  # its turn came: start.lua decides
        finally:
            services.listener.leave(item)
