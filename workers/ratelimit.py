"""Fleet-wide rate limits for model calls: ``ORCH_RATE_LIMITS``, inline JSON or a JSON file's
path, mapping a model (or a named key) to its provider's limits, any subset::

    {"gpt-4o-mini": {"requests_per_minute": 60, "input_tokens_per_minute": 200000,
                     "output_tokens_per_minute": 50000, "concurrent": 20}}

``window_s`` (default 60) is the sliding window the limits are enforced over, each per-minute
number scaled to it: ``{"requests_per_minute": 300, "window_s": 2}`` lets 10 requests into any
2 s, never a burst of 300 (providers enforce sub-minute windows too). ``lease_s`` (default
60) is how long a concurrency lease lives when its holder crashes: set it above the longest
call.

Every worker machine asks the same Redis (``lua/throttle.lua``, one atomic call): a sliding
window log, not a token bucket, because the promise is "no window ever holds more than the
limit", which a bucket's burst allowance breaks at its edges. A call asks for one request and
its input tokens (an estimate); it gets "go" or "wait w s", sleeps (a cancel ends the sleep
at once) and asks again. Output tokens are charged when the call ends, with what it used.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.errors import ConfigError
from workers.store.limits import AsyncLimits, Quota

__all__ = ["Lease", "Limiter", "RateLimit", "RateLimits", "Throttle", "parse_rate_limits"]

log = logging.getLogger(__name__)
SETTING = "ORCH_RATE_LIMITS"
#: Spread of the waiters' next asks (fraction of the wait, at most JITTER_MAX_S): woken at
#: the same millisecond they would all ask the same script at once.
JITTER = 0.05
JITTER_MAX_S = 0.05


class RateLimit(BaseModel):
    """One model's (or key's) limits; None: not limited on that count."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: float | None = Field(None, gt=0)
    input_tokens_per_minute: float | None = Field(None, gt=0)
    output_tokens_per_minute: float | None = Field(None, gt=0)
    concurrent: int | None = Field(None, ge=1)
    window_s: float = Field(60.0, gt=0, le=3600)
    lease_s: float = Field(60.0, gt=0)

    def quota(self) -> Quota:
        """The allowances per window, as the script takes them."""
        return Quota(
            window_ms=math.ceil(self.window_s * 1000),
            requests=self._per_window(self.requests_per_minute),
            input_tokens=self._per_window(self.input_tokens_per_minute),
            output_tokens=self._per_window(self.output_tokens_per_minute),
            concurrent=self.concurrent or 0,
            lease_ms=math.ceil(self.lease_s * 1000),
        )

    def _per_window(self, per_minute: float | None) -> int:
        if per_minute is None:
            return 0
        return max(1, math.floor(per_minute * self.window_s / 60 + 1e-9))


class RateLimits:
    """The limits table of this process."""

    def __init__(self, table: dict[str, RateLimit] | None = None) -> None:
        self.table = dict(table or {})

    def get(self, name: str | None) -> RateLimit | None:
        """The limit of a model or key, if it has one."""
        return self.table.get(name) if name else None

    def __bool__(self) -> bool:
        return bool(self.table)


def _config_error(message: str) -> ConfigError:
    return ConfigError(f"{SETTING}: {message}", setting=SETTING)


def _read(value: str) -> Any:
    text = value.strip()
    if not text.startswith("{"):
        path = Path(text).expanduser()
        try:
            text = path.read_text()
        except OSError as exc:
            raise _config_error(
                f"names a file that cannot be read ({path}: {exc.strerror}); give inline JSON "
                '({"model": {"requests_per_minute": 60}}) or the path of such a file'
            ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise _config_error(
            f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None


@functools.lru_cache(maxsize=8)
def parse_rate_limits(value: str | None) -> RateLimits:
    """ORCH_RATE_LIMITS as a table; ConfigError naming the setting for anything else."""
    if not value or not value.strip():
        return RateLimits()
    raw = _read(value)
    if not isinstance(raw, dict):
        raise _config_error("must be a JSON object: model or key -> its limits")
    table: dict[str, RateLimit] = {}
    for name, limit in raw.items():
        try:
            table[str(name)] = RateLimit.model_validate(limit)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'its value'}: {e['msg']}"
                for e in exc.errors()
            )
            raise _config_error(
                f"{name!r} takes requests_per_minute, input_tokens_per_minute, "
                "output_tokens_per_minute (numbers > 0), concurrent (an integer >= 1), "
                f"window_s and lease_s ({problems})"
            ) from None
    return RateLimits(table)


class Waiter(Protocol):
    """What a throttled caller offers: a cancellable sleep, and a place to note the wait."""

    async def sleep_async(self, seconds: float) -> None: ...

    def note_throttled(self, name: str, waited_s: float) -> None: ...


class Lease:
    """One call's turn under a limit; release it when the call ends, with what it used."""

    def __init__(
        self, limiter: Limiter | None, name: str, lease_id: str, input_estimate: int
    ) -> None:
        self._limiter = limiter
        self.name = name
        self.lease_id = lease_id
        self.input_estimate = input_estimate
        self.released = False

    async def release(self, *, input_tokens: int | None = None, output_tokens: int = 0) -> None:
        """Give the turn back (a concurrency slot) and charge the call's real usage: its
        output tokens and any input above the estimate. Idempotent; best effort."""
        if self.released or self._limiter is None:
            self.released = True
            return
        self.released = True
        extra = 0 if input_tokens is None else input_tokens - self.input_estimate
        try:
            await self._limiter.release(self, extra, output_tokens)
        except Exception as exc:  # the lease expires by itself; the call's result stands
            log.warning("rate limit %r: release failed (%s); its lease expires", self.name, exc)


class Limiter:
    """This process's side of the fleet-wide limits (one per process; the store is made on
    the event loop, on first use)."""

    def __init__(self, limits: RateLimits, store: Callable[[], AsyncLimits]) -> None:
        self.limits = limits
        self._store = store

    async def acquire(self, name: str | None, tokens: int, waiter: Waiter) -> Lease:
        """Wait (through ``waiter``) until a call under ``name``'s limit may go; a name with
        no limit goes at once, with no Redis call."""
        limit = self.limits.get(name)
        lease = Lease(None, name or "", uuid.uuid4().hex, tokens)
        if limit is None or name is None:
            return lease
        quota, store, waited = limit.quota(), self._store(), False
        began = time.monotonic()
        try:
            while (wait_s := await store.acquire(name, lease.lease_id, quota, tokens)) > 0:
                waited = True
                jitter_s = random.uniform(0, min(JITTER_MAX_S, wait_s * JITTER))
                await waiter.sleep_async(wait_s + jitter_s)
        finally:  # a wait cut short by a cancel is throttled time too
            if waited:
                waiter.note_throttled(name, time.monotonic() - began)
        return Lease(self, name, lease.lease_id, tokens)

    async def release(self, lease: Lease, extra_input: int, output_tokens: int) -> None:
        """See Lease.release."""
        limit = self.limits.get(lease.name)
        if limit is None:
            return
        await self._store().release(
            lease.name, lease.lease_id, limit.quota(), extra_input, output_tokens
        )


class Throttle:
    """``await ctx.throttle(...)`` (a Lease, released by its TTL or by you) or
    ``async with ctx.throttle(...) as lease:`` (released at the block's end)."""

    def __init__(
        self, limiter: Limiter | None, name: str | None, tokens: int, waiter: Waiter
    ) -> None:
        self._limiter = limiter
        self._name = name
        self._tokens = tokens
        self._waiter = waiter
        self._lease: Lease | None = None

    async def _acquire(self) -> Lease:
        if self._limiter is None:
            return Lease(None, self._name or "", uuid.uuid4().hex, self._tokens)
        return await self._limiter.acquire(self._name, self._tokens, self._waiter)

    def __await__(self) -> Generator[Any, None, Lease]:
        return self._acquire().__await__()

    async def __aenter__(self) -> Lease:
        self._lease = await self._acquire()
        return self._lease

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._lease is not None:
            await self._lease.release()
