"""One asyncio event loop per worker process, in a thread of its own, where every ``async def``
agent, merger and validator of the process runs, many at once; and the watchdog that names an
async subagent blocking that loop (a ``time.sleep`` or a sync HTTP call inside ``async def``).

A blocked loop stalls every subagent on it, so the watchdog does two things: when one step of
an agent's coroutine (the code between two of its awaits) has run for
``ORCH_AIO__BLOCKED_WARN_S`` it logs which subagent blocks and where (file, line); after
``ORCH_AIO__BLOCKED_LIMIT_S`` it raises :class:`LoopBlocked` inside it (an asynchronous
exception: it lands when the blocking call returns to Python), so that subagent ends with an
error envelope and the others go on. It times steps, not the loop's latency: a loop that is
merely busy (a thousand subagents each doing a little) blocks nobody and stops nobody.
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


def on_a_loop() -> bool:
    """Whether this thread runs an asyncio event loop right now."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _where(frame: FrameType | None) -> str:
    """The frame running now (the line that blocks: a C call such as time.sleep has none of
    its own), as file:line."""
    if frame is None:
        return "an unknown place"
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


class Timed:
    """An agent's coroutine whose every step is timed: the loop thread notes when the step it
    runs began, the watchdog reads it (``AgentLoop.timed``)."""

    def __init__(self, coro: Coroutine[Any, Any, Any], label: str, owner: AgentLoop) -> None:
        self._coro = coro
        self.label = label
        self._owner = owner
        #: What the watchdog saw, if this agent blocked the loop.
        self.block: Block | None = None

    def __await__(self) -> Timed:
        return self

    def __iter__(self) -> Timed:
        return self

    def __next__(self) -> Any:
        return self.send(None)

    def send(self, value: Any) -> Any:
        self._owner.step = (self, time.monotonic())
        try:
            return self._coro.send(value)
        finally:
            self._owner.step = None

    def throw(self, *exc: Any) -> Any:
        self._owner.step = (self, time.monotonic())
        try:
            return self._coro.throw(*exc)
        finally:
            self._owner.step = None

    def close(self) -> None:
        self._coro.close()


class AgentLoop:
    """The process's event loop for async subagents (start it after fork)."""

    def __init__(self, settings: AsyncSettings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        #: The agent step running on the loop now, and when it began (set on the loop thread).
        self.step: tuple[Timed, float] | None = None
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

    def timed(self, coro: Coroutine[Any, Any, Any], label: str) -> Timed:
        """The agent's coroutine with its steps timed for the watchdog (await it, or give
        ``run_timed`` to a task)."""
        return Timed(coro, label, self)

    # -- the watchdog ----------------------------------------------------------------------
    def _watchdog(self) -> None:
        tick_s = min(0.05, self.settings.blocked_warn_s / 5)
        warned: tuple[Timed, float] | None = None
        while True:
            time.sleep(tick_s)
            step = self.step
            if step is None:
                continue
            timed, began = step
            blocked_s = time.monotonic() - began
            if blocked_s < self.settings.blocked_warn_s:
                continue
            where = self._frame_where()
            if warned != step:
                warned = step
                self._warn(timed.label, blocked_s, where)
            if blocked_s >= self.settings.blocked_limit_s and timed.block is None:
                timed.block = Block(timed.label, where, blocked_s, stopped=True)
                if self.step is step:  # still that very step: interrupt it
                    self._interrupt()

    def _warn(self, what: str, blocked_s: float, where: str) -> None:
        log.warning(
            "%s has blocked the event loop of async subagents for %.1f s at %s; every async "
            "subagent of this process waits meanwhile (stopped after ORCH_AIO__BLOCKED_LIMIT_S"
            "=%.0f s): await instead of blocking, or use asyncio.to_thread",
            what,
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


async def run_timed(timed: Timed) -> Any:
    """A task's coroutine for a Timed agent coroutine."""
    return await timed
