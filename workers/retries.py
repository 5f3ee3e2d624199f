"""Retries that respect the provider: ``await retrying(ctx, call, policy=RetryPolicy())``.

A 429, a transient 5xx, a timeout or a lost connection (``ModelCallFailed``, or any exception
the policy names) is retried after the wait the provider asked for (``Retry-After``, as
``retry_after_s``) or a jittered exponential backoff; never past the subagent's deadline (the
last error is raised at once instead of sleeping into it), and a cancel ends the wait at once
(``ctx.sleep_async``). Each retry counts in the envelope's ``retries`` and appends a ``retry``
event to the run's stream.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from workers.context import AgentContext
from workers.errors import ModelCallFailed

__all__ = ["DEFAULT_POLICY", "RetryPolicy", "retrying"]

T = TypeVar("T")
#: Statuses worth another try: timeouts, conflicts, rate limits, a server's transient failures.
TRANSIENT_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry (``attempts`` counts the first call)."""

    attempts: int = 6
    base_s: float = 0.5
    max_s: float = 30.0
    statuses: frozenset[int] = TRANSIENT_STATUSES
    #: A ModelCallFailed with no status (timed out, could not connect) is retried.
    connection_errors: bool = True
    #: Other exceptions to retry (their ``retry_after_s`` attribute, if any, is honoured).
    retry_on: tuple[type[Exception], ...] = ()

    def retryable(self, exc: Exception) -> bool:
        """Whether this failure is worth another try."""
        if isinstance(exc, ModelCallFailed):
            if exc.status is None:
                return self.connection_errors
            return exc.status in self.statuses
        return isinstance(exc, self.retry_on)

    def delay_s(self, retry: int, exc: Exception) -> float:
        """The wait before retry number ``retry`` (1, 2, ...): what the provider asked, else
        half the backoff plus a random part of the other half (waiters spread, none at 0)."""
        asked = getattr(exc, "retry_after_s", None)
        if isinstance(asked, int | float) and asked >= 0:
            return float(asked)
        backoff_s: float = min(self.max_s, self.base_s * 2.0 ** (retry - 1))
        return backoff_s / 2 + random.uniform(0, backoff_s / 2)


DEFAULT_POLICY = RetryPolicy()


async def retrying(
    ctx: AgentContext, call: Callable[[], Awaitable[T]], policy: RetryPolicy = DEFAULT_POLICY
) -> T:
    """``await call()``, retried as ``policy`` says, within ``ctx``'s deadline; the last
    failure is raised when the attempts are spent or the next wait would pass the deadline."""
    retry = 0
    while True:
        ctx.raise_if_cancelled()
        try:
            return await call()
        except Exception as exc:
            retry += 1
            if retry >= policy.attempts or not policy.retryable(exc):
                raise
            delay_s = policy.delay_s(retry, exc)
            if delay_s >= ctx.remaining_s():
                raise
            ctx.note_retry(retry, delay_s, getattr(exc, "status", None))
        await ctx.sleep_async(delay_s)
