"""The fleet-wide rate limits' Redis side (``lua/throttle.lua``): one call's turn under every
limit it is under, asked for, given back and kept (renewed), from an event loop or a thread."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.names import Keys
from workers.scripts import THROTTLE
from workers.store.base import StoreBase
from workers.store.multiplexer import Multiplexer

__all__ = ["AsyncLimits", "Quota", "SyncLimits"]


@dataclass(frozen=True)
class Quota:
    """One limit as throttle.lua takes it: allowances per window (0: no limit)."""

    window_ms: int
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    concurrent: int = 0
    lease_ms: int = 60_000

    @property
    def ttl_s(self) -> int:
        """How long an idle limit's keys stay: a window and a lease, and a minute more."""
        return (self.window_ms + self.lease_ms) // 1000 + 60


#: The limits of one call: (name, quota) pairs, each name a model, ``key:<name>`` or
#: ``agent:<name>``.
Limits = Sequence[tuple[str, Quota]]


def _keys(keys: Keys, limits: Limits) -> list[str]:
    return [k for name, _ in limits for k in keys.rate_limit(name)]


def acquire_call(
    keys: Keys, lease_id: str, limits: Limits, input_tokens: int
) -> tuple[list[str], list[Any]]:
    """throttle.lua's keys and arguments for a turn under every one of ``limits``."""
    args: list[Any] = ["acquire", lease_id, len(limits)]
    for _, q in limits:
        args += [
            q.window_ms, q.ttl_s, q.requests, q.input_tokens, q.output_tokens, q.concurrent,
            max(0, input_tokens), q.lease_ms,
        ]  # fmt: skip
    return _keys(keys, limits), args


def release_call(
    keys: Keys, lease_id: str, limits: Limits, extra_input: int, output_tokens: int
) -> tuple[list[str], list[Any]]:
    """throttle.lua's keys and arguments for giving the turn back, charged what it used."""
    args: list[Any] = ["release", lease_id, len(limits)]
    for _, q in limits:
        args += [q.window_ms, q.ttl_s, max(0, extra_input), max(0, output_tokens)]
    return _keys(keys, limits), args


def renew_call(keys: Keys, lease_id: str, limits: Limits) -> tuple[list[str], list[Any]]:
    """throttle.lua's keys and arguments for keeping the concurrency leases of ``limits``."""
    args: list[Any] = ["renew", lease_id, len(limits)]
    for _, q in limits:
        args += [q.lease_ms, q.ttl_s]
    return _keys(keys, limits), args


class AsyncLimits:
    """Ask for a turn under a call's limits, and give it back, through the loop's
    multiplexer."""

    def __init__(self, mux: Multiplexer) -> None:
        self.mux = mux

    async def acquire(self, lease_id: str, limits: Limits, input_tokens: int) -> float:
        """0.0 when the call may go (charged under every limit: one request, ``input_tokens``,
        a lease where concurrency is limited), else the seconds to wait before asking again."""
        keys, args = acquire_call(self.mux.keys, lease_id, limits, input_tokens)
        return int(await self.mux.script(THROTTLE, keys, args)) / 1000

    async def release(
        self, lease_id: str, limits: Limits, extra_input: int, output_tokens: int
    ) -> None:
        """The call ended: its leases go, and what it really used is charged (the input
        above the estimate it was let in with, its output)."""
        keys, args = release_call(self.mux.keys, lease_id, limits, extra_input, output_tokens)
        await self.mux.script(THROTTLE, keys, args)


class SyncLimits:
    """The same calls from a thread (a sync agent, the process's lease keeper)."""

    def __init__(self, store: StoreBase) -> None:
        self.store = store

    def acquire(self, lease_id: str, limits: Limits, input_tokens: int) -> float:
        """See AsyncLimits.acquire."""
        keys, args = acquire_call(self.store.keys, lease_id, limits, input_tokens)
        return int(THROTTLE(self.store.r, keys, args)) / 1000

    def release(self, lease_id: str, limits: Limits, extra_input: int, output_tokens: int) -> None:
        """See AsyncLimits.release."""
        keys, args = release_call(self.store.keys, lease_id, limits, extra_input, output_tokens)
        THROTTLE(self.store.r, keys, args)

    def renew(self, lease_id: str, limits: Limits) -> int:
        """Keep the call's concurrency leases another lease from now; returns how many were
        gone already (expired before this renewal)."""
        keys, args = renew_call(self.store.keys, lease_id, limits)
        return int(THROTTLE(self.store.r, keys, args))
