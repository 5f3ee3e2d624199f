"""One asyncio event loop per worker process, in a thread of its own, where every ``async def``
agent, merger and validator of the process runs, many at once; and the watchdog that names an
async subagent blocking that loop (a ``time.sleep`` or a sync HTTP call inside ``async def``).

A blocked loop stalls every subagent on it, so the watchdog does two things: after
``ORCH_AIO__BLOCKED_WARN_S`` it logs which subagent blocks and where (file, line); after
``ORCH_AIO__BLOCKED_LIMIT_S`` it raises :class:`LoopBlocked` inside it (an asynchronous
exception: it lands when the blocking call returns to Python), so that subagent ends with an
error envelope and the others go on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import sys
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from types import FrameType
from typing import Any, TypeVar

from workers.errors import LoopBlocked
from workers.settings_sections import AsyncSettings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Block:
    """One stretch during which a watched task kept the loop busy."""

    what: str
    where: str
    blocked_s: float
    stopped: bool = False

    def describe(self) -> str:
        """The envelope's error message."""
        return (
            f"{self.what} blocked the event loop for {self.blocked_s:.1f} s at {self.where}: "
            "a blocking call inside async def (time.sleep, a sync HTTP client, CPU work) stalls "
            "every async subagent of the process; await instead (asyncio.sleep, "
            "ctx.sleep_async, an async client) or run it with asyncio.to_thread"
        )


def _where(frame: FrameType | None) -> str:
    """The frame running now (the line that blocks: a C call such as time.sleep has none of
    its own), as file:line."""
    if frame is None:
        return "an unknown place"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


class AgentLoop:
    """The process's event loop for async subagents (start it after fork)."""

    def __init__(self, settings: AsyncSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._watched: dict[asyncio.Task[Any], str] = {}
        #: Blocks of watched tasks, read (and dropped) by the runtime when the task ends.
        self.blocks: dict[asyncio.Task[Any], Block] = {}
        self._beat_at = time.monotonic()
        self._lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> AgentLoop:
        """Start the loop's thread and the watchdog (idempotent)."""
        with self._lock:
            if self._thread is not None:
                return self
            self._thread = threading.Thread(target=self._run, name="orch-agents-loop", daemon=True)
            self._thread.start()
            threading.Thread(target=self._watchdog, name="orch-loop-watchdog", daemon=True).start()
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(lambda: self.loop.create_task(self._beat()))
        while True:
            try:
                self.loop.run_forever()
                return
            except BaseException as exc:  # a LoopBlocked that landed between two callbacks
                log.error("event loop of async subagents interrupted (%r); it goes on", exc)

    @property
    def in_loop(self) -> bool:
        """True on the loop's own thread."""
        return self._thread is not None and threading.current_thread() is self._thread

    # -- running coroutines ----------------------------------------------------------------
    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule a coroutine on the loop from any thread."""
        self.start()
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the loop and wait for it (from a thread that is not the loop's:
        a sync agent's async validator, or an async agent in a pool slot of Celery's own)."""
        if self.in_loop:
            coro.close()
            raise RuntimeError("AgentLoop.run() called on the loop's own thread; await instead")
        return self.submit(coro).result()

    # -- the watchdog ----------------------------------------------------------------------
    def watch(self, task: asyncio.Task[Any], what: str) -> None:
        """Name a task for the watchdog ("agent 'x' (run r #3)"); unwatch it when it ends."""
        self._watched[task] = what

    def unwatch(self, task: asyncio.Task[Any]) -> Block | None:
        """Stop watching; the block the task caused, if any."""
        self._watched.pop(task, None)
        return self.blocks.pop(task, None)

    async def _beat(self) -> None:
        tick_s = min(0.05, self.settings.blocked_warn_s / 5)
        while True:
            self._beat_at = time.monotonic()
            await asyncio.sleep(tick_s)

    def _watchdog(self) -> None:
        tick_s = min(0.05, self.settings.blocked_warn_s / 5)
        warned_for = -1.0
        while True:
            time.sleep(tick_s)
            beat_at = self._beat_at
            blocked_s = time.monotonic() - beat_at - tick_s
            if blocked_s < self.settings.blocked_warn_s:
                continue
            task = asyncio.current_task(self.loop)
            what = self._watched.get(task) if task is not None else None
            if warned_for != beat_at:
                warned_for = beat_at
                self._warn(task, what, blocked_s)
            if task is None or what is None or blocked_s < self.settings.blocked_limit_s:
                continue
            block = self.blocks.get(task)
            if block is not None and block.stopped:
                continue
            self.blocks[task] = Block(what, self._frame_where(), blocked_s, stopped=True)
            self._interrupt()

    def _warn(self, task: asyncio.Task[Any] | None, what: str | None, blocked_s: float) -> None:
        where = self._frame_where()
        who = what or (f"task {task.get_name()}" if task is not None else "a callback")
        if task is not None and what is not None and task not in self.blocks:
            self.blocks[task] = Block(what, where, blocked_s)
        log.warning(
            "%s has blocked the event loop of async subagents for %.1f s at %s; every async "
            "subagent of this process waits meanwhile (stopped after ORCH_AIO__BLOCKED_LIMIT_S"
            "=%.0f s): await instead of blocking, or use asyncio.to_thread",
            who,
            blocked_s,
            where,
            self.settings.blocked_limit_s,
        )

    def _frame_where(self) -> str:
        ident = self._thread.ident if self._thread is not None else None
        return _where(sys._current_frames().get(ident) if ident is not None else None)

    def _interrupt(self) -> None:
        ident = self._thread.ident if self._thread is not None else None
        if ident is not None:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(ident), ctypes.py_object(LoopBlocked)
            )
