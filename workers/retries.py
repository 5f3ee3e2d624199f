"""Retries that respect the provider: ``await retrying(ctx, call)`` (``retrying_sync`` from a
sync agent), with the agent's own policy (``@agent(..., retry=RetryPolicy(attempts=4))``) unless
the call names one.

A 429, a transient 5xx, a timeout or a lost connection (``ModelCallFailed``, or any exception
the policy's ``on`` names) is retried after the wait the provider asked for (``Retry-After``, as
``retry_after_s``) or a jittered exponential backoff. Retrying stops where the subagent's run
stops: never past its deadline (the last error is raised at once instead of sleeping into it),
never after its run crossed its budget (the failed attempt's spend is sent to the run's ledger
first; the subagent is then stopped as the budget stops it, cancelled, not failed), and a
cancel ends the wait at once. Each retry counts in the envelope's ``retries`` and appends a
``retry`` event to the run's stream.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from workers.errors import ModelCallFailed, TaskCancelled

if TYPE_CHECKING:  # the context holds the agent's policy: it imports this module
    from workers.context import AgentContext

__all__ = ["DEFAULT_POLICY", "RetryPolicy", "retrying", "retrying_sync"]

T = TypeVar("T")
#: Statuses worth another try: timeouts, conflicts, rate limits, a server's transient failures.
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
#: What a subagent stopped by its run's budget says (its envelope: cancelled).
BUDGET_STOP = "the run's budget was crossed: no further retry"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry (``attempts`` counts the first call)."""

    attempts: int = 6
    #: The first backoff; each retry doubles it, up to ``max_backoff_s``.
    backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    statuses: frozenset[int] = TRANSIENT_STATUSES
    #: A ModelCallFailed with no status (timed out, could not connect) is retried.
    connection_errors: bool = True
    #: Other exceptions to retry (their ``retry_after_s`` attribute, if any, is honoured).
    on: tuple[type[Exception], ...] = ()

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryPolicy: attempts must be >= 1 (got {self.attempts})")
        if self.backoff_s < 0 or self.max_backoff_s < self.backoff_s:
            raise ValueError(
                "RetryPolicy: backoff_s must be >= 0 and max_backoff_s >= backoff_s "
                f"(got {self.backoff_s}, {self.max_backoff_s})"
            )
        bad = [e for e in self.on if not (isinstance(e, type) and issubclass(e, Exception))]
        if bad:
            raise TypeError(f"RetryPolicy: on takes Exception subclasses, got {bad!r}")

    def retryable(self, exc: Exception) -> bool:
        """Whether this failure is worth another try."""
        if isinstance(exc, ModelCallFailed):
            if exc.status is None:
                return self.connection_errors
            return exc.status in self.statuses
        return isinstance(exc, self.on)

    def delay_s(self, retry: int, exc: Exception) -> float:
        """The wait before retry number ``retry`` (1, 2, ...): what the provider asked, else
        half the backoff plus a random part of the other half (waiters spread, none at 0)."""
        asked = getattr(exc, "retry_after_s", None)
        if isinstance(asked, int | float) and asked >= 0:
            return float(asked)
        backoff_s: float = min(self.max_backoff_s, self.backoff_s * 2.0 ** (retry - 1))
        return backoff_s / 2 + random.uniform(0, backoff_s / 2)


DEFAULT_POLICY = RetryPolicy()


def policy_of(ctx: AgentContext, policy: RetryPolicy | None) -> RetryPolicy:
    """The call's policy, else the agent's (``@agent(retry=...)``), else the default."""
    return policy or ctx.retry_policy or DEFAULT_POLICY


def _next_delay(ctx: AgentContext, policy: RetryPolicy, retry: int, exc: Exception) -> float | None:
    """The wait before the next try, or None: raise ``exc`` now (attempts spent, not
    retryable, or the wait would pass the deadline)."""
    if retry >= policy.attempts or not policy.retryable(exc):
        return None
    delay_s = policy.delay_s(retry, exc)
    return None if delay_s >= ctx.remaining_s() else delay_s


async def retrying(
    ctx: AgentContext, call: Callable[[], Awaitable[T]], policy: RetryPolicy | None = None
) -> T:
    """``await call()``, retried as ``policy`` (else the agent's) says, within ``ctx``'s
    deadline and its run's budget; the last failure is raised when the attempts are spent or
    the next wait would pass the deadline."""
    chosen, retry = policy_of(ctx, policy), 0
    while True:
        ctx.raise_if_cancelled()
        try:
            return await call()
        except Exception as exc:
            retry += 1
            delay_s = _next_delay(ctx, chosen, retry, exc)
            if delay_s is None:
                raise
            failure = exc
        # Outside the except block: a stop raised here does not chain the provider's error.
        if await ctx.budget_crossed_async():
            raise TaskCancelled(BUDGET_STOP)
        ctx.note_retry(retry, delay_s, getattr(failure, "status", None))
        await ctx.sleep_async(delay_s)


def retrying_sync(ctx: AgentContext, call: Callable[[], T], policy: RetryPolicy | None = None) -> T:
    """``retrying`` for a sync agent: ``call()`` retried the same way; the waits are
    ``ctx.sleep`` (a cancel wakes them at once)."""
    chosen, retry = policy_of(ctx, policy), 0
    while True:
        ctx.raise_if_cancelled()
        try:
            return call()
        except Exception as exc:
            retry += 1
            delay_s = _next_delay(ctx, chosen, retry, exc)
            if delay_s is None:
                raise
            failure = exc
        if ctx.budget_crossed():
            raise TaskCancelled(BUDGET_STOP)
        ctx.note_retry(retry, delay_s, getattr(failure, "status", None))
        ctx.sleep(delay_s)
