"""Run handles: wait for a run, follow it, stop it, read its report."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from orchestrator.api import aio
from orchestrator.api.host import RunHost
from orchestrator.api.live_envelopes import LIVE_MIN_N, LiveEnvelopes
from workers import ending
from workers.errors import RunTimedOut
from workers.models import RoiReport, RunProgress, RunResult
from workers.store import CONNECTION_ERRORS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from orchestrator.events import RunEvent

#: The connection errors a wait rides out within the caller's limit (Redis restarting or
#: failing over).
_TRANSIENT = CONNECTION_ERRORS


class Run:
    """A handle on one orchestration, wherever it was submitted."""

    def __init__(self, host: RunHost, run_id: str) -> None:
        self.orch = host
        self.id = run_id

    def __repr__(self) -> str:
        return f"Run({self.id!r})"

    def result(self) -> RunResult | None:
        """The final result if the run has ended, else None (no waiting)."""
        return self.orch.store.result(self.id)

    def wait(self, timeout_s: float | None = None) -> RunResult:
        """Block until the run ends (no polling: a blocking read on Redis).

        Raises RunTimedOut if ``timeout_s`` passes first; the run itself goes on.
        """
        store = self.orch.store
        limit = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
        deadline_raw, n_raw = store.run_fields(self.id, ["deadline_at", "n"])
        deadline_at, n = float(deadline_raw or 0), int(n_raw or 0)
        # A wide run's envelopes are read while it runs: little is left to fetch at the end.
        live = LiveEnvelopes(store, self.id, n) if n >= LIVE_MIN_N else None
        while True:
            try:
                result = store.result(self.id, live.have, n) if live else store.result(self.id)
            except _TRANSIENT:
                if time.monotonic() >= limit:
                    raise
                time.sleep(0.2)  # the server is away: retry within the caller's limit
                continue
            if result is not None:
                return result
            if ending.overdue(deadline_at, grace_s=ending.DEADLINE_GRACE_S):
                # The coordinator should have ended it; it may be gone. End it from here.
                ending.expire(store, self.orch.revoke, self.id)
                continue
            remaining = limit - time.monotonic()
            if remaining <= 0:
                raise RunTimedOut(
                    f"run {self.id} still {store.progress(self.id).status.value} after "
                    f"{timeout_s}s of waiting; it goes on: wait again, or run.cancel()",
                    run_id=self.id,
                )
            step = min(remaining, deadline_at + ending.DEADLINE_GRACE_S - time.time() + 0.05)
            with contextlib.suppress(*_TRANSIENT):
                if live:
                    live.wait(max(step, 0.001))
                else:
                    store.wait_done(self.id, max(step, 0.001))

    async def wait_async(self, timeout_s: float | None = None) -> RunResult:
        """``wait`` for asyncio: awaits the end without blocking the loop, and without a thread
        or a connection per waiting run (one shared blocked read; see orchestrator/api/aio.py)."""
        return await aio.wait_async(self.orch, self.id, timeout_s)

    def events(self, since: str = "0-0") -> AsyncIterator[RunEvent]:
        """The run's events as they happen (``async for event in run.events()``): from the
        start (or after the event id ``since``), ending with ``run_finished``."""
        return aio.run_events(self.orch, self.id, since=since)

    def status(self) -> RunProgress:
        """A live snapshot: status, started, finished, counts per outcome."""
        return self.orch.store.progress(self.id)

    def cancel(self, reason: str = "cancelled by user") -> RunResult:
        """Stop the run everywhere; returns the final result (cancelled, or how it had ended)."""
        ending.cancel(self.orch.store, self.orch.revoke, self.id, reason)
        result = self.orch.store.result(self.id)
        assert result is not None
        return result

    def settle(self, timeout_s: float = 10.0) -> RunResult:
        """After the run ended: wait until every subtask that started has reported (a race's
        losers or a cancelled run's subtasks actually stopped), at most ``timeout_s``, then
        :meth:`refreshed`. Subtasks still silent then (their worker died) stay 'cancelled'."""
        store = self.orch.store
        n = len(self.wait(timeout_s=timeout_s).results)
        cursor = "0-0"
        limit = time.monotonic() + timeout_s
        while store.reported_count(self.id) < n and (left := limit - time.monotonic()) > 0:
            # Each report appends a 'finished' event: block on the stream, no polling.
            got = store.read_events(self.id, cursor, count=1000, block_s=min(left, 1.0))
            if got:
                cursor = got[-1][0]
        return self.refreshed()

    def report(self) -> RoiReport:
        """The ROI report, recomputed from every envelope that has arrived (late losers too)."""
        return self.refreshed().report

    def refreshed(self) -> RunResult:
        """The final result rebuilt from every envelope that has arrived (late losers too);
        RunTimedOut while the run is still going."""
        result = self.result() or self.wait(timeout_s=0.001)
        return ending.refresh(self.orch.store, result)
