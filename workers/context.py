"""What every agent and merger is handed: who it is, its deadline, progress and cancellation."""

from __future__ import annotations

import logging
import time

from workers.cancel import Running
from workers.errors import TaskCancelled
from workers.models import Pattern
from workers.store import RunStore

log = logging.getLogger(__name__)
#: Progress events are throttled to one per subtask per this many seconds.
PROGRESS_EVERY_S = 0.2


class AgentContext:
    """Handed to every agent and merger: who it is, its deadline, progress and cancellation."""

    def __init__(
        self,
        *,
        run_id: str,
        task_id: str,
        index: int,
        agent: str,
        pattern: Pattern,
        attempt: int,
        deadline_at: float,
        worker: str,
        running: Running | None = None,
        store: RunStore | None = None,
    ) -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.index = index
        self.agent = agent
        self.pattern = pattern
        self.attempt = attempt
        self.deadline_at = deadline_at
        self.worker = worker
        self._running = running
        self._store = store
        self._last_progress = 0.0

    def remaining_s(self) -> float:
        """Seconds until the orchestration's deadline."""
        return self.deadline_at - time.time()

    def cancelled(self) -> bool:
        """True once this subtask was asked to stop (race lost, run cancelled, deadline)."""
        if self._running is not None and self._running.cancel_at is not None:
            return True
        return time.time() > self.deadline_at

    def raise_if_cancelled(self) -> None:
        """Raise TaskCancelled when asked to stop; cheap enough to call in a loop."""
        if self.cancelled():
            reason = self._running.reason if self._running else None
            raise TaskCancelled(reason or "deadline passed")

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once and raise TaskCancelled when asked to stop.

        Prefer it to ``time.sleep`` in agents: in the threads pool a plain sleep cannot be
        interrupted (an interrupt lands only between bytecodes).
        """
        limit = max(0.0, min(seconds, self.remaining_s()))
        if self._running is not None:
            self._running.cancelled.wait(limit)
        else:
            time.sleep(limit)
        self.raise_if_cancelled()

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0..1) to the run's event stream; throttled."""
        now = time.monotonic()
        if self._store is None or now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        try:
            self._store.event(
                self.run_id,
                "progress",
                index=str(self.index),
                fraction=f"{max(0.0, min(1.0, fraction)):.3f}",
                message=message[:200],
            )
        except Exception as exc:  # progress is best effort; never fail the agent for it
            log.debug("progress event dropped: %s", exc)
