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
import re
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from celery.worker import state as worker_state

from workers.models import AgentResult, AgentStatus, ErrorInfo
from workers.registry import BATCH_TASK_PREFIX
from workers.store import RunStore

log = logging.getLogger(__name__)
_SUBTASK_ID = re.compile(r"^([A-Za-z0-9_-]{1,64})\.(\d+)$")
_BATCH_ID = re.compile(r"^([A-Za-z0-9_-]{1,64})\.b(\d+)$")


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
        out, batches = [], []
        for req in list(worker_state.active_requests):
            if not req.worker_pid:
                continue
            one, batch = _SUBTASK_ID.match(req.id or ""), _BATCH_ID.match(req.id or "")
            if one and req.name.startswith("agents."):
                agent = req.name.split(".", 1)[1]
                run_id, index = one.group(1), int(one.group(2))
                out.append(_Running(req.id, run_id, index, agent, req.worker_pid))
            elif batch and req.name.startswith(BATCH_TASK_PREFIX):
                indices = [int(item[0]) for item in (req.kwargs or {}).get("items", [])]
                batches.append((req, batch.group(1), indices))
        if batches:
            out += self._current_items(batches)
        return out

    def _current_items(self, batches: list[tuple[Any, str, list[int]]]) -> list[_Running]:
        """The item each batch message is running: the first one started and not reported."""
        keys = self.store.keys
        pipe = self.store.r.pipeline(transaction=False)
        for _, run_id, indices in batches:
            pipe.hmget(keys.attempts(run_id), [str(i) for i in indices])
            pipe.hmget(keys.results(run_id), [str(i) for i in indices])
        replies = pipe.execute()
        out = []
        for n, (req, run_id, indices) in enumerate(batches):
            attempts, results = replies[2 * n], replies[2 * n + 1]
            for index, attempt, result in zip(indices, attempts, results, strict=True):
                if attempt and result is None:
                    agent = req.name[len(BATCH_TASK_PREFIX) :]
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
        pipe = self.store.r.pipeline(transaction=False)
        for r in running:
            pipe.get(self.store.keys.cancel(r.run_id))
            pipe.hget(self.store.keys.task_cancel(r.run_id), str(r.index))
            pipe.get(self.store.keys.winner(r.run_id))
        flags = pipe.execute()
        now = time.monotonic()
        for n, r in enumerate(running):
            run_reason, task_reason, winner = flags[3 * n : 3 * n + 3]
            if winner is not None and int(winner) == r.index:
                continue  # the race winner is never a target
            reason = task_reason or run_reason
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
            task_id=f"{r.run_id}.{r.index}",
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
            cancel_requested_at=_float(
                self.store.r.hget(self.store.keys.run(r.run_id), "cancel_requested_at")
            ),
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


def _float(value: Any) -> float | None:
    return float(value) if value else None
