"""What the runtime needs in each worker process: the store, the cancel listener, the
registry, the event loop for async agents, the price table; one per process, after fork."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from workers import ending
from workers.agent_loop import AgentLoop
from workers.cancel import CancelListener
from workers.limiter import Limiter
from workers.patterns import Completion
from workers.prices import Prices
from workers.ratelimit import RateLimits
from workers.registry import Registry
from workers.settings import Settings
from workers.store import AsyncSubtasks, RunStore, multiplexer
from workers.store.limits import AsyncLimits, SyncLimits

__all__ = ["Services"]


@dataclass
class Services:
    """What the runtime needs in each worker process."""

    store: RunStore
    listener: CancelListener
    registry: Registry
    revoke: ending.Revoke
    #: Sends a message the coordinator stored on the run record (a gather's merger).
    send: Callable[[str], None]
    #: Starts of one subtask after which it is given up (ORCH_MAX_ATTEMPTS).
    max_attempts: int = 3
    #: Retries of a state Redis call of the async path (ORCH_STATE_RETRIES).
    state_retries: int = 25
    #: The process's event loop for async agents, mergers and validators.
    loop: AgentLoop | None = None
    #: The state Redis URL the loop's multiplexer connects to.
    state_url: str = ""
    #: ORCH_PRICES, and how often a subagent's spend reaches the ledger (ORCH_LEDGER__FLUSH_S).
    prices: Prices = field(default_factory=Prices)
    flush_s: float = 0.25
    #: Async subagents this process runs at once (ORCH_AIO__MAX_IN_FLIGHT): the consumer's
    #: prefetch counts messages, and a batch message carries several.
    max_in_flight: int = 500
    #: ORCH_RATE_LIMITS: the fleet-wide limits of model calls.
    rate_limits: RateLimits = field(default_factory=RateLimits)
    #: The worker's settings (child runs are submitted with them); None outside a worker.
    settings: Settings | None = None
    #: Widens (+1) or narrows (-1) the async queues' prefetch (workers/async_consumer.py).
    widen: Callable[[int], None] | None = None
    _aio: AsyncSubtasks | None = None
    _limiter: Limiter | None = None
    _slots: asyncio.Semaphore | None = None

    def completion(self, run_id: str) -> Completion:
        """What a pattern's completion rule gets."""
        return Completion(store=self.store, run_id=run_id, send=self.send, revoke=self.revoke)

    def agent_loop(self) -> AgentLoop:
        """The process's event loop (started on first use)."""
        if self.loop is None:
            raise RuntimeError("this process has no event loop for async agents")
        return self.loop.start()

    def aio_slots(self) -> asyncio.Semaphore:
        """The loop's in-flight limit (made on the loop, on first use)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_in_flight)
        return self._slots

    @contextlib.asynccontextmanager
    async def lend_slot(self) -> AsyncIterator[None]:
        """While an async subagent awaits its child run, its in-flight place (and one message
        of prefetch) goes to others: a parent waiting on its children must not starve them,
        or a tree deeper than the slots would hang on a single worker."""
        slots = self.aio_slots()
        slots.release()
        if self.widen is not None:
            self.widen(1)
        try:
            yield
        finally:
            if self.widen is not None:
                self.widen(-1)
            await slots.acquire()

    def aio(self) -> AsyncSubtasks:
        """The subtask calls for the event loop (made on the loop, on first use)."""
        if self._aio is None:
            self._aio = AsyncSubtasks(
                multiplexer(self.state_url, self.store.keys.prefix), self.store
            )
        return self._aio

    def limiter(self) -> Limiter:
        """The process's side of the fleet-wide rate limits (its asyncio store made on the
        loop, when a limited async call first asks; sync agents and the lease keeper use the
        process's store)."""
        if self._limiter is None:
            sync = SyncLimits(self.store)
            self._limiter = Limiter(
                self.rate_limits, lambda: AsyncLimits(self.aio().mux), lambda: sync
            )
        return self._limiter
