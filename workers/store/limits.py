"""The fleet-wide rate limits' Redis side (``lua/throttle.lua``), from an event loop."""

from __future__ import annotations

from dataclasses import dataclass

from workers.scripts import THROTTLE
from workers.store.multiplexer import Multiplexer

__all__ = ["AsyncLimits", "Quota"]


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


class AsyncLimits:
    """Ask for a turn under a limit, and give it back, through the loop's multiplexer."""

    def __init__(self, mux: Multiplexer) -> None:
        self.mux = mux

    async def acquire(self, name: str, lease_id: str, quota: Quota, input_tokens: int) -> float:
        """0.0 when the call may go (charged: one request, ``input_tokens``, a lease when
        concurrency is limited), else the seconds to wait before asking again."""
        args = [
            "acquire", lease_id, quota.window_ms, quota.ttl_s, quota.requests,
            quota.input_tokens, quota.output_tokens, quota.concurrent, max(0, input_tokens),
            quota.lease_ms,
        ]  # fmt: skip
        wait_ms = await self.mux.script(THROTTLE, self.mux.keys.rate_limit(name), args)
        return int(wait_ms) / 1000

    async def release(
        self, name: str, lease_id: str, quota: Quota, extra_input: int, output_tokens: int
    ) -> None:
        """The call ended: its lease goes, and what it really used is charged (the input
        above the estimate it was let in with, its output)."""
        args = [
            "release", lease_id, quota.window_ms, quota.ttl_s, max(0, extra_input),
            max(0, output_tokens),
        ]  # fmt: skip
        await self.mux.script(THROTTLE, self.mux.keys.rate_limit(name), args)
