"""Targeted interruption of running subtasks, one listener thread per worker process.

A cancel reaches a process as a pub/sub message (and, should one be missed, through a periodic
check of the flags). The listener interrupts a task only while that very task is inside its agent
function in this process:

* a task on the process's main thread (prefork child, solo pool) gets a real-time signal sent to
  that thread; the handler raises :class:`TaskCancelled` only if the task is still interruptible,
  so a signal that arrives late can never hit the next task. Blocking sleeps and socket reads
  return early because the signal interrupts the system call.
* a task on another thread (threads pool) gets an asynchronous exception, raised between
  bytecodes, delivered under the same lock the task takes to leave its agent function.

A prefork task that ignores the interrupt (stuck in C) is killed after a grace period by the
worker's main process (:mod:`workers.grace_killer`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from workers.errors import TaskCancelled
from workers.store import CancelFeed, RunStore

log = logging.getLogger(__name__)

INTERRUPT_SIGNAL = signal.SIGRTMIN + 5
SWITCH_INTERVAL_S = 0.001


def _raise_in_thread(ident: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(ident), ctypes.py_object(TaskCancelled)
    )


def _clear_in_thread(ident: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.c_void_p(0))


@dataclass(eq=False)
class Running:
    """One subtask running in this process."""

    run_id: str
    index: int
    task_id: str
    thread_ident: int
    on_main_thread: bool
    interruptible: bool = False
    cancel_at: float | None = None
    reason: str | None = None
    stopped: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)
    #: An async subagent: how to cancel its asyncio task (at its current await), instead of a
    #: signal or an asynchronous exception in a thread.
    on_cancel: Callable[[], None] | None = None

    def request(self, reason: str, at: float) -> bool:
        """Mark the stop request (waking ``ctx.sleep``); True the first time."""
        if self.cancel_at is not None:
            return False
        self.cancel_at, self.reason = at, reason
        self.cancelled.set()
        return True


class CancelListener:
    """Per-process registry of running subtasks plus the thread that interrupts them."""

    def __init__(self, store: RunStore, *, poll_s: float) -> None:
        self.store = store
        self.poll_s = poll_s
        self.lock = threading.Lock()
        self.running: dict[str, Running] = {}
        self.pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._main_current: Running | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the listener thread (idempotent) and the signal handler on the main thread."""
        if self._thread is not None and self._thread.is_alive():
            return
        if threading.current_thread() is threading.main_thread():
            signal.signal(INTERRUPT_SIGNAL, self._on_signal)
        # A CPU-bound agent holds the GIL; the listener waits one switch interval to get it,
        # and the signal handler another to get it back. 1 ms instead of 5 ms cuts the cancel
        # latency of such agents; the listener is idle otherwise, so nothing else changes.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._thread = threading.Thread(target=self._loop, name="orch-cancel", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end."""
        self._stop.set()

    # -- registration (called by the runtime around the agent function) --------------------
    @contextlib.contextmanager
    def track_async(
        self, run_id: str, index: int, task_id: str, on_cancel: Callable[[], None]
    ) -> Iterator[Running]:
        """Register a running async subtask (see ``track``); a cancel calls ``on_cancel`` from
        the listener's thread, once, while the agent is inside its function."""
        item = Running(run_id, index, task_id, threading.get_ident(), False, on_cancel=on_cancel)
        with self.lock:
            self.running[task_id] = item
        try:
            yield item
        finally:
            with self.lock:
                item.interruptible = False
                self.running.pop(task_id, None)
            item.stopped.set()

    @contextlib.contextmanager
    def track(self, run_id: str, index: int, task_id: str) -> Iterator[Running]:
        """Register a running subtask for the duration of the block."""
        on_main = threading.current_thread() is threading.main_thread()
        item = Running(run_id, index, task_id, threading.get_ident(), on_main)
        with self.lock:
            self.running[task_id] = item
            if on_main:
                self._main_current = item
        try:
            yield item
        finally:
            with self.lock:
                item.interruptible = False
                self.running.pop(task_id, None)
                if self._main_current is item:
                    self._main_current = None
                if not on_main:
                    _clear_in_thread(item.thread_ident)  # drop a pending one
            item.stopped.set()

    def enter(self, item: Running) -> None:
        """The agent function starts: from now on a cancel interrupts it."""
        with self.lock:
            if item.cancel_at is not None:
                raise TaskCancelled(item.reason or "cancelled")
            item.interruptible = True

    def leave(self, item: Running) -> None:
        """The agent function returned: no interrupt may land after this."""
        with self.lock:
            item.interruptible = False
            if not item.on_main_thread and item.on_cancel is None:
                _clear_in_thread(item.thread_ident)

    # -- delivery --------------------------------------------------------------------------
    def _on_signal(self, signum: int, frame: Any) -> None:
        item = self._main_current
        if item is not None and item.cancel_at is not None and item.interruptible:
            item.interruptible = False
            raise TaskCancelled(item.reason or "cancelled")

    def cancel(self, item: Running, reason: str, at: float) -> None:
        """Interrupt one running subtask if it is still inside its agent function."""
        with self.lock:
            if self.running.get(item.task_id) is not item or not item.request(reason, at):
                return
            if not item.interruptible:
                return  # enter() sees cancel_at and raises; or it already returned
            if item.on_cancel is not None:
                item.on_cancel()
            elif item.on_main_thread:
                signal.pthread_kill(item.thread_ident, INTERRUPT_SIGNAL)
            else:
                _raise_in_thread(item.thread_ident)

    def _dispatch(self, message: dict[str, Any]) -> None:
        run_id = message.get("run")
        indices = message.get("indices")
        keep = message.get("keep")
        reason = str(message.get("reason") or "cancelled")
        at = float(message.get("at") or time.time())
        with self.lock:
            targets = [
                item
                for item in self.running.values()
                if item.run_id == run_id
                and item.index != keep
                and (indices is None or item.index in indices)
            ]
        for item in targets:
            self.cancel(item, reason, at)

    def _check_flags(self) -> None:
        with self.lock:
            items = [i for i in self.running.values() if i.cancel_at is None]
        if not items:
            return
        flags = self.store.stop_flags([(i.run_id, i.index) for i in items])
        for item, (reason, _) in zip(items, flags, strict=True):
            if reason:
                self.cancel(item, reason, time.time())

    def _loop(self) -> None:
        pubsub: CancelFeed | None = None
        while not self._stop.is_set():
            try:
                if pubsub is None:
                    pubsub = self.store.cancel_feed()
                message = pubsub.next_message(self.poll_s)
                if message is not None:
                    self._dispatch(message)
                self._check_flags()
            except Exception as exc:  # the connection dropped: reconnect, keep checking flags
                log.warning("cancel listener: %s; reconnecting", exc)
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
                pubsub = None
                self._stop.wait(self.poll_s)
