"""One subagent's spend as it runs: what ``ctx.record_usage`` added, and how much of it has
reached the run's ledger.

The run record sums tokens and dollars in Redis (``spend.lua`` while a subagent runs, at most
every ``ORCH_LEDGER__FLUSH_S``; ``finish.lua`` adds the rest with the envelope), and checks the
run's budget in the same script. Between two flushes the spend stays here: a budget's
overshoot is bounded by one flush interval of the subagents in flight (plus what they spend
until their stop lands).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from workers.models import Usage
from workers.prices import Prices

__all__ = ["SpendDelta", "SpendMeter"]


@dataclass(frozen=True)
class SpendDelta:
    """Spend not yet in the run's ledger."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    unpriced: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.input_tokens or self.output_tokens or self.cost_usd or self.unpriced)

    def args(self) -> list[str]:
        """How the Lua scripts take it."""
        return [
            str(self.input_tokens),
            str(self.output_tokens),
            repr(self.cost_usd),
            ",".join(self.unpriced),
        ]


@dataclass
class SpendMeter:
    """A subagent's running usage (thread-safe enough: one agent adds from one place)."""

    prices: Prices
    flush_s: float
    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    priced: bool = False
    unpriced: list[str] = field(default_factory=list)
    _flushed: SpendDelta = field(default_factory=SpendDelta)
    _flushed_at: float = field(default_factory=time.monotonic)
    _recorded: bool = False
    #: Flushes of an async subagent still on their way (awaited before its envelope).
    inflight: set[Any] = field(default_factory=set)

    def add(
        self, model: str | None, input_tokens: int, output_tokens: int, cost_usd: float | None
    ) -> None:
        """Add one call's (or one chunk's) usage; cost from the price table when not given."""
        if input_tokens < 0 or output_tokens < 0 or (cost_usd is not None and cost_usd < 0):
            raise ValueError("record_usage: tokens and cost_usd must be >= 0")
        self._recorded = True
        self.model = model or self.model
        self.input_tokens += int(input_tokens)
        self.output_tokens += int(output_tokens)
        if cost_usd is None:
            cost_usd = self.prices.cost_usd(model, input_tokens, output_tokens)
        if cost_usd is None:
            if (input_tokens or output_tokens) and (model or "?") not in self.unpriced:
                self.unpriced.append(model or "?")
        else:
            self.cost_usd += cost_usd
            self.priced = True

    @property
    def usage(self) -> Usage | None:
        """The total so far (None: nothing recorded)."""
        if not self._recorded:
            return None
        return Usage(
            model=self.model,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            cost_usd=self.cost_usd if self.priced else None,
            unpriced=list(self.unpriced),
        )

    def due(self) -> bool:
        """Whether unflushed spend waited a flush interval."""
        return bool(self.pending()) and time.monotonic() - self._flushed_at >= self.flush_s

    def pending(self) -> SpendDelta:
        """What the run's ledger has not been given yet."""
        done = self._flushed
        return SpendDelta(
            input_tokens=self.input_tokens - done.input_tokens,
            output_tokens=self.output_tokens - done.output_tokens,
            cost_usd=self.cost_usd - done.cost_usd,
            unpriced=tuple(m for m in self.unpriced if m not in done.unpriced),
        )

    def take(self) -> SpendDelta:
        """The pending spend, counted as given to the ledger from now on."""
        delta = self.pending()
        self._flushed = SpendDelta(
            self.input_tokens, self.output_tokens, self.cost_usd, tuple(self.unpriced)
        )
        self._flushed_at = time.monotonic()
        return delta

    def give_back(self, delta: SpendDelta) -> None:
        """A flush that failed: its spend goes with the next one (or with the envelope)."""
        done = self._flushed
        self._flushed = SpendDelta(
            done.input_tokens - delta.input_tokens,
            done.output_tokens - delta.output_tokens,
            done.cost_usd - delta.cost_usd,
            tuple(m for m in done.unpriced if m not in delta.unpriced),
        )
