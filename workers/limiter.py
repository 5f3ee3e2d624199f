"""This process's side of the fleet-wide rate limits (workers/ratelimit.py): ``ctx.throttle``'s
turn under every limit a call is under, from an async agent (``await``, ``async with``) or a
sync one (``.wait()``, ``with``).

A call asks for one request and its input tokens (an estimate) under all its limits at once
(``lua/throttle.lua``); it gets "go" or "wait w s", sleeps (a cancel ends the sleep at once)
and asks again. Output tokens are charged when the call ends, with what it used. A turn under
a ``concurrent`` limit is a lease: the process's lease keeper (one thread) renews it every
third of ``lease_s`` while the call runs, so a long call keeps its slot; a process that dies
stops renewing, and its slots come back ``lease_s`` later.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol

from workers.ratelimit import RateLimit, RateLimits
from workers.store.limits import AsyncLimits, Limits, SyncLimits

__all__ = ["Lease", "LeaseKeeper", "Limiter", "Throttle", "Turn", "Waiter"]

log = logging.getLogger(__name__)
#: Spread of the waiters' next asks (fraction of the wait, at most JITTER_MAX_S): woken at
#: the same millisecond they would all ask the same script at once.
JITTER = 0.05
JITTER_MAX_S = 0.05
#: A held lease is renewed every this share of its ``lease_s``: two renewals may fail (Redis
#: away for a moment) before it expires.
RENEW_SHARE = 1 / 3


class Waiter(Protocol):
    """What a throttled caller offers: cancellable sleeps, and a place to note the wait."""

    async def sleep_async(self, seconds: float) -> None: ...

    def sleep(self, seconds: float) -> None: ...

    def note_throttled(self, name: str, waited_s: float) -> None: ...


@dataclass(frozen=True)
class Turn:
    """What one call asks for: the limits it is under (by name) and its input tokens."""

    limits: Limits
    tokens: int

    @property
    def name(self) -> str:
        """The limits' names, as events show them (``m+key:team-a``)."""
        return "+".join(name for name, _ in self.limits)

    @property
    def leased(self) -> Limits:
        """The limits whose turn is a concurrency lease (renewed while the call runs)."""
        return [(n, q) for n, q in self.limits if q.concurrent]


def _jitter(wait_s: float) -> float:
    return random.uniform(0, min(JITTER_MAX_S, wait_s * JITTER))


class Lease:
    """One call's turn under its limits; release it when the call ends, with what it used."""

    def __init__(self, limiter: Limiter | None, turn: Turn, lease_id: str) -> None:
        self._limiter = limiter
        self.turn = turn
        self.name = turn.name
        self.lease_id = lease_id
        self.input_estimate = turn.tokens
        self.released = False

    def _extra(self, input_tokens: int | None) -> int:
        return 0 if input_tokens is None else input_tokens - self.input_estimate

    def _take(self) -> Limiter | None:
        """The limiter to give the turn back to, once (None: nothing to give back)."""
        limiter, self._limiter = self._limiter, None
        if self.released or limiter is None:
            self.released = True
            return None
        self.released = True
        limiter.keeper.forget(self.lease_id)
        return limiter

    async def release(self, *, input_tokens: int | None = None, output_tokens: int = 0) -> None:
        """Give the turn back (its concurrency slots) and charge the call's real usage: its
        output tokens and any input above the estimate. Idempotent; best effort."""
        limiter = self._take()
        if limiter is None:
            return
        try:
            await limiter.store().release(
                self.lease_id, self.turn.limits, self._extra(input_tokens), output_tokens
            )
        except Exception as exc:  # the lease expires by itself; the call's result stands
            log.warning("rate limit %r: release failed (%s); its lease expires", self.name, exc)

    def release_sync(self, *, input_tokens: int | None = None, output_tokens: int = 0) -> None:
        """``release`` from a sync agent."""
        limiter = self._take()
        if limiter is None:
            return
        try:
            limiter.sync_store().release(
                self.lease_id, self.turn.limits, self._extra(input_tokens), output_tokens
            )
        except Exception as exc:  # as above
            log.warning("rate limit %r: release failed (%s); its lease expires", self.name, exc)


class LeaseKeeper:
    """Renews the process's concurrency leases while their calls run: one daemon thread (made
    again after a fork: a thread does not survive one), started by the first lease."""

    def __init__(self, store: Callable[[], SyncLimits]) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._wake = threading.Event()
        #: lease id -> (its leased limits, renewal interval s, next renewal at, monotonic)
        self._leases: dict[str, tuple[Limits, float, float]] = {}
        self._thread: threading.Thread | None = None
        self._pid = 0

    def keep(self, lease_id: str, limits: Limits) -> None:
        """Renew this lease until ``forget``."""
        every_s = min(q.lease_ms for _, q in limits) / 1000 * RENEW_SHARE
        with self._lock:
            self._leases[lease_id] = (limits, every_s, time.monotonic() + every_s)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="orch-lease-keeper", daemon=True
                )
                self._thread.start()
        self._wake.set()

    def forget(self, lease_id: str) -> None:
        """The call ended: its lease is given back (or left to expire)."""
        with self._lock:
            self._leases.pop(lease_id, None)

    def held(self) -> int:
        """Leases being renewed now."""
        with self._lock:
            return len(self._leases)

    def _run(self) -> None:
        while True:
            now = time.monotonic()
            with self._lock:
                due = [(i, lim) for i, (lim, _, at) in self._leases.items() if at <= now]
                for lease_id, _ in due:
                    limits, every_s, _ = self._leases[lease_id]
                    self._leases[lease_id] = (limits, every_s, now + every_s)
                nexts = [at for _, _, at in self._leases.values()]
            for lease_id, limits in due:
                self._renew(lease_id, limits)
            self._wake.wait(max(0.0, min(nexts) - time.monotonic()) if nexts else 60.0)
            self._wake.clear()

    def _renew(self, lease_id: str, limits: Limits) -> None:
        try:
            lost = self._store().renew(lease_id, limits)
        except Exception as exc:  # the next renewal tries again; the lease may expire first
            log.warning("rate limit lease %s: renewal failed (%s)", lease_id[:8], exc)
            return
        if lost:
            log.warning(
                "rate limit lease %s: %d of its concurrency slots expired before renewal "
                "(a stall longer than lease_s); the call goes on",
                lease_id[:8],
                lost,
            )


class Limiter:
    """One per process: the limits table, and the stores it asks (made on first use: the
    asyncio one on the event loop)."""

    def __init__(
        self,
        limits: RateLimits,
        store: Callable[[], AsyncLimits],
        sync_store: Callable[[], SyncLimits],
    ) -> None:
        self.limits = limits
        self.store = store
        self.sync_store = sync_store
        self.keeper = LeaseKeeper(sync_store)

    def turn(
        self,
        *,
        model: str | None,
        key: str | None,
        tokens: int,
        agent: str = "",
        own: str | RateLimit | None = None,
    ) -> Turn:
        """The turn a call asks for (ConfigError: a key or agent limit not in the table)."""
        found = self.limits.for_call(model=model, key=key, agent=agent, own=own)
        return Turn([(name, limit.quota()) for name, limit in found], max(0, tokens))

    async def acquire(self, turn: Turn, waiter: Waiter) -> Lease:
        """Wait (through ``waiter``) until the call may go under every limit of ``turn``; a
        call under none goes at once, with no Redis call."""
        lease_id = uuid.uuid4().hex
        if not turn.limits:
            return Lease(None, turn, lease_id)
        store, waited, began = self.store(), False, time.monotonic()
        try:
            while (wait_s := await store.acquire(lease_id, turn.limits, turn.tokens)) > 0:
                waited = True
                await waiter.sleep_async(wait_s + _jitter(wait_s))
        finally:  # a wait cut short by a cancel is throttled time too
            if waited:
                waiter.note_throttled(turn.name, time.monotonic() - began)
        return self._granted(turn, lease_id)

    def acquire_sync(self, turn: Turn, waiter: Waiter) -> Lease:
        """``acquire`` from a sync agent: a blocking wait that a cancel wakes at once."""
        lease_id = uuid.uuid4().hex
        if not turn.limits:
            return Lease(None, turn, lease_id)
        store, waited, began = self.sync_store(), False, time.monotonic()
        try:
            while (wait_s := store.acquire(lease_id, turn.limits, turn.tokens)) > 0:
                waited = True
                waiter.sleep(wait_s + _jitter(wait_s))
        finally:
            if waited:
                waiter.note_throttled(turn.name, time.monotonic() - began)
        return self._granted(turn, lease_id)

    def _granted(self, turn: Turn, lease_id: str) -> Lease:
        if turn.leased:
            self.keeper.keep(lease_id, turn.leased)
        return Lease(self, turn, lease_id)


class Throttle:
    """``await ctx.throttle(...)`` / ``ctx.throttle(...).wait()`` (a Lease, released by its
    TTL or by you) or ``async with`` / ``with ctx.throttle(...) as lease:`` (released at the
    block's end)."""

    def __init__(self, limiter: Limiter | None, turn: Turn, waiter: Waiter) -> None:
        self._limiter = limiter
        self._turn = turn
        self._waiter = waiter
        self._lease: Lease | None = None

    async def _acquire(self) -> Lease:
        if self._limiter is None:
            return Lease(None, self._turn, uuid.uuid4().hex)
        return await self._limiter.acquire(self._turn, self._waiter)

    def wait(self) -> Lease:
        """Block until the call may go (a sync agent's ``await``)."""
        if self._limiter is None:
            return Lease(None, self._turn, uuid.uuid4().hex)
        return self._limiter.acquire_sync(self._turn, self._waiter)

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

    def __enter__(self) -> Lease:
        self._lease = self.wait()
        return self._lease

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._lease is not None:
            self._lease.release_sync()
