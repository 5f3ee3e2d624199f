"""What every agent and merger is handed: who it is, its deadline, progress and cancellation."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from workers.agent_loop import on_a_loop
from workers.cancel import Running
from workers.errors import TaskCancelled
from workers.ledger import SpendDelta, SpendMeter
from workers.limiter import Limiter, Throttle, Turn
from workers.models import Pattern, Usage
from workers.prices import Prices
from workers.ratelimit import RateLimit
from workers.retries import RetryPolicy
from workers.store import RunStore

if TYPE_CHECKING:
    from workers.children import Children, ChildRun
    from workers.store import AsyncSubtasks

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
        aio: Callable[[], AsyncSubtasks] | None = None,
        meter: SpendMeter | None = None,
        flush: Callable[[SpendDelta], None] | None = None,
        limiter: Limiter | None = None,
        children: Children | None = None,
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
        self._aio = aio
        self._last_progress = 0.0
        self._pending: set[asyncio.Task[None]] = set()
        #: This subagent's spend (``record_usage``) and how it reaches the run's ledger.
        self.meter = meter or SpendMeter(Prices(), flush_s=0.25)
        self._flush = flush
        self._limiter = limiter
        #: Seconds spent waiting for a turn under a rate limit, and retries of failed calls
        #: (the envelope's ``throttled_s`` and ``retries``).
        self.throttled_s = 0.0
        self.retries = 0
        self._children = children
        #: The agent's declarations (``@agent(model=, rate_limit=, retry=)``): the model its
        #: throttles default to, its own limit, its retry policy.
        self.model: str | None = None
        self.rate_limit: str | RateLimit | None = None
        self.retry_policy: RetryPolicy | None = None

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

    def record_usage(
        self,
        *,
        model: str | None = None,
        input_tokens: int = 0,
        output_tokens: int = 0,
        cost_usd: float | None = None,
    ) -> Usage:
        """Add model usage to this subagent's running total (call it per chunk or per call;
        ``workers.llm.chat`` does). Dollars come from ``ORCH_PRICES`` when ``cost_usd`` is not
        given; a model with no price keeps its tokens and no cost. The total reaches the run's
        ledger and its budget check at most every ``ORCH_LEDGER__FLUSH_S``, and with the
        envelope; a crossed budget stops the run (this subagent included)."""
        self.meter.add(model, input_tokens, output_tokens, cost_usd)
        if self._flush is not None and self.meter.due():
            self._flush(self.meter.take())
        return self.spent

    @property
    def spent(self) -> Usage:
        """This subagent's usage so far (tokens, and dollars when priced)."""
        return self.meter.usage or Usage()

    async def sleep_async(self, seconds: float) -> None:
        """``await asyncio.sleep``, but at most until the deadline, and raising TaskCancelled
        when asked to stop (a cancel also lands at any other await, as CancelledError)."""
        self.raise_if_cancelled()
        await asyncio.sleep(max(0.0, min(seconds, self.remaining_s())))
        self.raise_if_cancelled()

    def throttle(
        self, *, model: str | None = None, key: str | None = None, tokens: int = 0
    ) -> Throttle:
        """Wait for a turn under every fleet-wide rate limit (ORCH_RATE_LIMITS) of the call:
        ``model``'s (else the agent's declared model), ``key``'s (``key:<key>``) and the
        agent's own (``@agent(rate_limit=...)``), all at once. ``await ctx.throttle(model="m",
        tokens=1200)`` before a call of about 1200 input tokens, or ``async with
        ctx.throttle(...) as lease:`` to give back a concurrency slot and charge the output at
        the end (``lease.release(output_tokens=)``); from a sync agent ``.wait()`` or ``with``
        (``lease.release_sync``). Under no limit it goes at once. A cancel ends the wait at
        once. ConfigError: ``key`` (or the agent's rate_limit) is not in ORCH_RATE_LIMITS."""
        spent = max(0, int(tokens))
        if self._limiter is None:
            return Throttle(None, Turn([], spent), self)
        turn = self._limiter.turn(
            model=model or self.model, key=key, tokens=spent, agent=self.agent,
            own=self.rate_limit,
        )  # fmt: skip
        return Throttle(self._limiter, turn, self)

    def budget_crossed(self) -> bool:
        """Whether the run's budget has been crossed, this subagent's spend so far included
        (sent to the run's ledger first): a retry loop's reason to stop."""
        if self._store is None:
            return False
        if self._flush is not None and self.meter.pending():
            self._flush(self.meter.take())
        try:
            return self._store.run_fields(self.run_id, ["n", "budget_crossed_at"])[1] is not None
        except Exception as exc:  # unknown: the retry goes on, the budget still stops it later
            log.debug("budget check failed: %s", exc)
            return False

    async def budget_crossed_async(self) -> bool:
        """``budget_crossed`` from an async agent (the flush awaited, then one read)."""
        if self._store is None or self._aio is None:
            return self.budget_crossed()
        if self._flush is not None and self.meter.pending():
            self._flush(self.meter.take())
        if self.meter.inflight:
            await asyncio.gather(*self.meter.inflight, return_exceptions=True)
        try:
            return await self._aio().run_field(self.run_id, "budget_crossed_at") is not None
        except Exception as exc:  # as above
            log.debug("budget check failed: %s", exc)
            return False

    def note_throttled(self, name: str, waited_s: float) -> None:
        """A wait under a rate limit ended: counted, and a ``throttled`` event."""
        self.throttled_s += waited_s
        fields = {"index": str(self.index), "limit": name[:100], "waited_s": f"{waited_s:.3f}"}
        self._event("throttled", fields)

    def note_retry(self, retry: int, delay_s: float, status: int | None) -> None:
        """A failed call will be tried again after ``delay_s``: counted, and a ``retry``
        event."""
        self.retries += 1
        fields = {"index": str(self.index), "retry": str(retry), "delay_s": f"{delay_s:.3f}"}
        self._event("retry", {**fields, "status": "" if status is None else str(status)})

    # -- child runs (composition) ------------------------------------------------------------
    def spawn(self, tasks: Sequence[Any], **options: Any) -> ChildRun:
        """Start a parallel-spawn below this subagent; a Run (``await run.wait_async()``, or
        ``run.wait()`` from a sync agent). Options as ``Orchestrator.spawn``'s; the child's
        deadline is at most this run's remaining time, its spend counts toward this run's
        budget (and every run above), and it stops when this subagent or its run ends."""
        return self._child(Pattern.SPAWN, tasks, options)

    def gather(self, tasks: Sequence[Any], *, merge: str, **options: Any) -> ChildRun:
        """Start a gather-then-merge below this subagent (see :meth:`spawn`)."""
        return self._child(Pattern.GATHER, tasks, {**options, "merge": merge})

    def race(self, tasks: Sequence[Any], **options: Any) -> ChildRun:
        """Start a race-then-cancel below this subagent (see :meth:`spawn`)."""
        return self._child(Pattern.RACE, tasks, options)

    def _child(self, pattern: Pattern, tasks: Sequence[Any], options: dict[str, Any]) -> ChildRun:
        if self._children is None:
            raise RuntimeError("this context cannot start child runs (not a worker's subagent)")
        self.raise_if_cancelled()
        return self._children.start(pattern, tasks, options)

    @property
    def children(self) -> list[str]:
        """Ids of the child runs this subagent started."""
        return [r.id for r in self._children.started] if self._children else []

    def close_children(self) -> None:
        """Stop the child runs still going: this subagent has ended (the runtime calls it)."""
        if self._children is not None:
            what = f"subagent #{self.index} ({self.agent}) of run {self.run_id}"
            self._children.close(f"{what} ended")

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0..1) to the run's event stream; throttled. From an async agent
        it never blocks the event loop: the event is sent in the background."""
        now = time.monotonic()
        if self._store is None or now - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = now
        fields = {
            "index": str(self.index),
            "fraction": f"{max(0.0, min(1.0, fraction)):.3f}",
            "message": message[:200],
        }
        self._event("progress", fields)

    def _event(self, kind: str, fields: dict[str, str]) -> None:
        """Append an event, best effort; from the loop in the background, never blocking."""
        if self._store is None:
            return
        if self._aio is not None and on_a_loop():
            task = asyncio.get_running_loop().create_task(self._event_async(kind, fields))
            self._pending.add(task)  # a task nobody holds may be collected before it runs
            task.add_done_callback(self._pending.discard)
            return
        try:
            self._store.event(self.run_id, kind, **fields)
        except Exception as exc:  # events are best effort; never fail the agent for one
            log.debug("%s event dropped: %s", kind, exc)

    async def _event_async(self, kind: str, fields: dict[str, str]) -> None:
        assert self._aio is not None
        try:
            await self._aio().event(self.run_id, kind, **fields)
        except Exception as exc:  # best effort, as above
            log.debug("%s event dropped: %s", kind, exc)
