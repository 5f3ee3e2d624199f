"""Run handles: wait for a run, follow it, stop it, read its report."""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from orchestrator.api import aio, completed
from orchestrator.api.aio import LOST_CHECK_S, REPLY_MARGIN_S
from orchestrator.api.host import RunHost
from orchestrator.api.live_envelopes import LIVE_MIN_N, LiveEnvelopes
from orchestrator.api.tree import read_tree
from workers import ending
from workers.errors import RunLost, RunNotFound, RunTimedOut
from workers.models import AgentResult, RoiReport, RunProgress, RunResult
from workers.run_tree import RunTree
from workers.settings import safe_url
from workers.store import CONNECTION_ERRORS, RunStore
from workers.store.multiplexer import unavailable
from workers.store.timeouts import replies_within

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Iterator

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

    @contextlib.contextmanager
    def _reachable(self) -> Iterator[None]:
        """The state server's connection errors as BrokerUnavailable (never a raw one)."""
        try:
            yield
        except _TRANSIENT as exc:
            raise unavailable(self.orch.settings.redis_url(), exc) from exc

    def result(self) -> RunResult | None:
        """The final result if the run has ended, else None (no waiting)."""
        with self._reachable():
            return self.orch.store.result(self.id)

    def wait(self, timeout_s: float | None = None) -> RunResult:
        """Block until the run ends (no polling: a blocking read on Redis).

        Raises RunTimedOut if ``timeout_s`` passes first; the run itself goes on. A state
        server that does not answer (frozen, cut off) raises BrokerUnavailable by then; one
        that forgot the run meanwhile (restarted without persistence) raises RunLost.
        """
        limit = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
        margin = None if timeout_s is None else max(timeout_s, 0.0) + REPLY_MARGIN_S
        with self._reachable(), replies_within(margin):
            return self._wait(self.orch.store, limit, timeout_s)

    def _wait(self, store: RunStore, limit: float, timeout_s: float | None) -> RunResult:
        deadline_raw, n_raw = store.run_fields(self.id, ["deadline_at", "n"])
        deadline_at, n = float(deadline_raw or 0), int(n_raw or 0)
        # A wide run's envelopes are read while it runs: little is left to fetch at the end.
        live = LiveEnvelopes(store, self.id, n) if n >= LIVE_MIN_N else None
        while True:
            try:
                result = store.result(self.id, live.have, n) if live else store.result(self.id)
                if result is None and not store.has_record(self.id):
                    raise self._lost()
            except _TRANSIENT:
                if time.monotonic() >= limit:
                    raise
                time.sleep(0.2)  # the server is away: retry within the caller's limit
                continue
            if result is not None:
                return result
            if ending.overdue(deadline_at, grace_s=ending.DEADLINE_GRACE_S):
                # The coordinator should have ended it; it may be gone. End it from here.
                self._lost_as_run_lost(lambda: ending.expire(store, self.orch.revoke, self.id))
                continue
            remaining = limit - time.monotonic()
            if remaining <= 0:
                status = self._lost_as_run_lost(lambda: store.progress(self.id).status.value)
                raise RunTimedOut(
                    f"run {self.id} still {status} after {timeout_s}s of waiting; it goes on: "
                    "wait again, or run.cancel()",
                    run_id=self.id,
                )
            step = min(
                remaining,
                deadline_at + ending.DEADLINE_GRACE_S - time.time() + 0.05,
                LOST_CHECK_S,
            )
            with contextlib.suppress(*_TRANSIENT):
                if live:
                    live.wait(max(step, 0.001))
                else:
                    store.wait_done(self.id, max(step, 0.001))

    def _lost(self) -> RunLost:
        return RunLost.of(self.id, safe_url(self.orch.settings.redis_url()))

    def _lost_as_run_lost(self, call: Callable[[], object]) -> object:
        """``call()``; a RunNotFound from it means the run was lost since the wait began."""
        try:
            return call()
        except RunNotFound as exc:
            raise self._lost() from exc

    async def wait_async(self, timeout_s: float | None = None) -> RunResult:
        """``wait`` for asyncio: awaits the end without blocking the loop, and without a thread
        or a connection per waiting run (one shared blocked read; see orchestrator/api/aio.py)."""
        return await aio.wait_async(self.orch, self.id, timeout_s)

    def as_completed(self, timeout_s: float | None = None) -> AsyncIterator[AgentResult]:
        """The envelopes as they finish (``async for env in run.as_completed()``), in finishing
        order, each once; it ends when the run has ended and every envelope reported by then
        was yielded. RunTimedOut after ``timeout_s`` in all (the run goes on)."""
        return completed.as_completed(self.orch, self.id, timeout_s)

    def iter_completed(self, timeout_s: float | None = None) -> Iterator[AgentResult]:
        """:meth:`as_completed` without asyncio: ``for env in run.iter_completed(): ...``
        (blocking reads on the run's event stream)."""
        with self._reachable():
            yield from completed.iter_completed(self.orch, self.id, timeout_s)

    def events(self, since: str = "0-0") -> AsyncIterator[RunEvent]:
        """The run's events as they happen (``async for event in run.events()``): from the
        start (or after the event id ``since``), ending with ``run_finished``."""
        return aio.run_events(self.orch, self.id, since=since)

    def status(self) -> RunProgress:
        """A live snapshot: status, started, finished, counts per outcome."""
        with self._reachable():
            return self.orch.store.progress(self.id)

    def cancel(self, reason: str = "cancelled by user") -> RunResult:
        """Stop the run everywhere; returns the final result (cancelled, or how it had ended)."""
        with self._reachable():
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

    def tree(self) -> RunTree:
        """This run and every child run below it (started by subagents with ctx.spawn /
        gather / race), recursively, each with its result (or progress) and the totals
        rolled up: wall time, work, tokens and dollars spent and wasted. A child started by a
        subagent whose work was wasted (a race loser, a cancelled or failed one) is wasted
        whole."""
        with self._reachable():
            return read_tree(self.orch.store, self.id)

    def report(self) -> RoiReport:
        """The ROI report, recomputed from every envelope that has arrived (late losers too)."""
        return self.refreshed().report

    def refreshed(self) -> RunResult:
        """The final result rebuilt from every envelope that has arrived (late losers too);
        RunTimedOut while the run is still going."""
        result = self.result() or self.wait(timeout_s=0.001)
        return ending.refresh(self.orch.store, result)
