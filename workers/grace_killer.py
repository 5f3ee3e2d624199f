"""Grace-period kill of prefork tasks that ignore their interrupt, done by the worker's main
process.

A task stuck in one long C call (``sum(range(10**10))``, a C extension) holds the GIL, so
nothing in its own process (signal handler, listener thread) can run. The main process can act:
it polls the cancel flags of the subtasks its pool is running and, once one has been cancelled for
``grace_s`` and is still running, kills that pool process. The decision runs on the worker's event
loop thread, the only thread that hands new tasks to pool processes, so the process killed is
still running that very task; and it first records the subtask's ``cancelled`` envelope with
HSETNX, killing only if no envelope existed (a task that already reported is never touched).
The pool replaces the process; the broker redelivers the message, which then skips. For a batch
message, the subtask concerned is the item it is running (started, not reported); the redelivered
batch skips its reported items and, the run being cancelled, the rest.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery.worker import state as worker_state

from workers.models import AgentResult, AgentStatus, ErrorInfo
from workers.names import agent_of_task, parse_batch_id, parse_subtask_id, subtask_id
from workers.store import RunStore

log = logging.getLogger(__name__)


class GraceKiller:
    """Runs in a prefork worker's main process."""

    def __init__(self, worker: Any, store: RunStore, *, grace_s: float, poll_s: float) -> None:
        self.worker = worker
        self.store = store
        self.grace_s = grace_s
        self.poll_s = poll_s
        self._first_seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orch-grace", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _running(self) -> list[_Running]:
        """The subtasks the pool runs now: one per agent message, the current item of a batch."""
        out: list[_Running] = []
        batches: list[tuple[Any, str, str, list[int]]] = []
        for req in list(worker_state.active_requests):
            task = agent_of_task(req.name or "") if req.worker_pid else None
            if task is None:
                continue
            agent, batched = task
            one, batch = parse_subtask_id(req.id or ""), parse_batch_id(req.id or "")
            if one and not batched:
                out.append(_Running(req.id, one[0], one[1], agent, req.worker_pid))
            elif batch and batched:
                indices = [int(item[0]) for item in (req.kwargs or {}).get("items", [])]
                batches.append((req, agent, batch[0], indices))
        if batches:
            out += self._current_items(batches)
        return out

    def _current_items(self, batches: list[tuple[Any, str, str, list[int]]]) -> list[_Running]:
        """The item each batch message is running: the first one started and not reported."""
        progress = self.store.batch_progress([(run_id, idx) for _, _, run_id, idx in batches])
        out = []
        for (req, agent, run_id, indices), (attempts, results) in zip(
            batches, progress, strict=True
        ):
            for index, attempt, result in zip(indices, attempts, results, strict=True):
                if attempt and result is None:
                    out.append(_Running(req.id, run_id, index, agent, req.worker_pid))
                    break
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._check()
            except Exception as exc:  # Redis away: try again next round
                log.debug("grace check failed: %s", exc)

    def _check(self) -> None:
        running = self._running()
        live = {r.key for r in running}
        for key in list(self._first_seen):
            if key not in live:
                del self._first_seen[key]
        if not running:
            return
        flags = self.store.stop_flags([(r.run_id, r.index) for r in running])
        now = time.monotonic()
        for r, (reason, winner) in zip(running, flags, strict=True):
            if winner == r.index:
                continue  # the race winner is never a target
            if not reason:
                continue
            first = self._first_seen.setdefault(r.key, now)
            if now - first >= self.grace_s:
                hub = getattr(self.worker, "hub", None)
                if hub is None:
                    self._kill(r, str(reason))
                else:
                    hub.call_soon(self._kill, r, str(reason))

    def _kill(self, r: _Running, why: str) -> None:
        still = any(
            q.id == r.message_id and q.worker_pid == r.pid
            for q in list(worker_state.active_requests)
        )
        if not still:
            return
        env = AgentResult(
            index=r.index,
            task_id=subtask_id(r.run_id, r.index),
            agent=r.agent,
            status=AgentStatus.CANCELLED,
            error=ErrorInfo(
                type="Cancelled",
                message=f"{why}; killed after grace period of {self.grace_s}s",
                hint="the agent ignored its interrupt (stuck in C code?): call "
                "ctx.raise_if_cancelled() in long loops",
            ),
            finished_at=time.time(),
            worker=getattr(self.worker, "hostname", None),
            cancel_requested_at=self.store.cancel_requested_at(r.run_id),
        )
        if not self.store.finish_task(r.run_id, env, claim=False).new:
            return  # it reported after all: leave the process alone
        log.warning(
            "subtask %s.%d (message %s) ignored its interrupt for %.1fs: killing pool process "
            "%d; the pool replaces it and the redelivered message skips",
            r.run_id,
            r.index,
            r.message_id,
            self.grace_s,
            r.pid,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(r.pid, signal.SIGKILL)
        self._first_seen.pop(r.key, None)


@dataclass(frozen=True)
class _Running:
    """One subtask a pool process is running, and the message it came in."""

    message_id: str
    run_id: str
    index: int
    agent: str
    pid: int

    @property
    def key(self) -> str:
        return f"{self.message_id}:{self.index}"
