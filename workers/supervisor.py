"""Grace-period kill of prefork tasks that ignore their interrupt, done by the worker's main
process.

A task stuck in one long C call (``sum(range(10**10))``, a C extension) holds the GIL, so
nothing in its own process (signal handler, listener thread) can run. The main process can act:
it polls the cancel flags of the subtasks its pool is running and, once one has been cancelled for
``grace_s`` and is still running, kills that pool process. The decision runs on the worker's event
loop thread, the only thread that hands new tasks to pool processes, so the process killed is
still running that very task; and it first records the subtask's ``cancelled`` envelope with
HSETNX, killing only if no envelope existed (a task that already reported is never touched).
The pool replaces the process; the broker redelivers the message, which then skips.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import threading
import time
from typing import Any

from celery.worker import state as worker_state

from workers.models import AgentResult, AgentStatus, ErrorInfo
from workers.store import RunStore

log = logging.getLogger(__name__)
_SUBTASK_ID = re.compile(r"^([A-Za-z0-9_-]{1,64})\.(\d+)$")


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

    def _running(self) -> list[tuple[str, str, int, str, int]]:
        """(task id, run id, index, agent, pid) of the subtasks the pool runs now."""
        out = []
        for req in list(worker_state.active_requests):
            match = _SUBTASK_ID.match(req.id or "")
            if match and req.worker_pid and req.name.startswith("agents."):
                agent = req.name.split(".", 1)[1]
                out.append((req.id, match.group(1), int(match.group(2)), agent, req.worker_pid))
        return out

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self._check()
            except Exception as exc:  # Redis away: try again next round
                log.debug("grace check failed: %s", exc)

    def _check(self) -> None:
        running = self._running()
        live = {r[0] for r in running}
        for task_id in list(self._first_seen):
            if task_id not in live:
                del self._first_seen[task_id]
        if not running:
            return
        pipe = self.store.r.pipeline(transaction=False)
        for _, run_id, index, _, _ in running:
            pipe.get(self.store.keys.cancel(run_id))
            pipe.hget(self.store.keys.task_cancel(run_id), str(index))
            pipe.get(self.store.keys.winner(run_id))
        flags = pipe.execute()
        now = time.monotonic()
        for n, (task_id, run_id, index, agent, pid) in enumerate(running):
            run_reason, task_reason, winner = flags[3 * n : 3 * n + 3]
            if winner is not None and int(winner) == index:
                continue  # the race winner is never a target
            reason = task_reason or run_reason
            if not reason:
                continue
            first = self._first_seen.setdefault(task_id, now)
            if now - first >= self.grace_s:
                hub = getattr(self.worker, "hub", None)
                if hub is None:
                    self._kill(task_id, run_id, index, agent, pid, str(reason))
                else:
                    hub.call_soon(self._kill, task_id, run_id, index, agent, pid, str(reason))

    def _kill(self, task_id: str, run_id: str, index: int, agent: str, pid: int, why: str) -> None:
        still = any(
            r.id == task_id and r.worker_pid == pid for r in list(worker_state.active_requests)
        )
        if not still:
            return
        env = AgentResult(
            index=index,
            task_id=task_id,
            agent=agent,
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
                self.store.r.hget(self.store.keys.run(run_id), "cancel_requested_at")
            ),
        )
        if not self.store.finish_task(run_id, env, claim=False).new:
            return  # it reported after all: leave the process alone
        log.warning(
            "task %s ignored its interrupt for %.1fs: killing pool process %d; the pool "
            "replaces it and the redelivered message skips",
            task_id,
            self.grace_s,
            pid,
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        self._first_seen.pop(task_id, None)


def _float(value: Any) -> float | None:
    return float(value) if value else None
