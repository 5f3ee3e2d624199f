"""The run's ledger as a report: tokens and dollars spent, wasted, per useful result, and the
budget's overshoot (pure functions over the run record and its envelopes).

*Spent* is the ledger on the run record: every attempt of every subagent, duplicates and
dead attempts included (partial spend is spend). *Useful* is what the results the caller keeps
cost: every ok output of a spawn or gather, a race's winner. *Wasted* is the rest: cancelled
and skipped subagents, race losers, failed and invalid outputs, attempts that died.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workers.models import AgentResult, AgentStatus

__all__ = ["Ledger", "budget_reason", "spend_fields"]


@dataclass(frozen=True)
class Ledger:
    """The spend fields of a run record (spend.lua and finish.lua keep them)."""

    input_tokens: int
    output_tokens: int
    cost_usd: float
    unpriced: list[str]
    max_tokens: int | None
    max_cost_usd: float | None
    crossed_at: float | None
    #: What the run's child runs (and theirs) spent: it counts toward this run's budget.
    sub_tokens: int = 0
    sub_cost_usd: float = 0.0

    @classmethod
    def of(cls, record: dict[str, str]) -> Ledger:
        """Read it off a run record."""
        return cls(
            input_tokens=int(record.get("spent:in") or 0),
            output_tokens=int(record.get("spent:out") or 0),
            cost_usd=float(record.get("spent:cost") or 0.0),
            unpriced=sorted(k[len("unpriced:") :] for k in record if k.startswith("unpriced:")),
            max_tokens=int(record["max_tokens"]) if record.get("max_tokens") else None,
            max_cost_usd=float(record["max_cost_usd"]) if record.get("max_cost_usd") else None,
            crossed_at=float(record["budget_crossed_at"])
            if record.get("budget_crossed_at")
            else None,
            sub_tokens=int(record.get("sub:tokens") or 0),
            sub_cost_usd=float(record.get("sub:cost") or 0.0),
        )

    @property
    def tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens

    @property
    def priced(self) -> bool:
        """Whether any spend had a price (else the dollars are unknown, not zero)."""
        return self.cost_usd > 0 or (self.tokens > 0 and not self.unpriced)


def budget_reason(record: dict[str, str]) -> str:
    """Why a run over its budget was stopped, with the numbers."""
    led = Ledger.of(record)
    tokens, cost = led.tokens + led.sub_tokens, led.cost_usd + led.sub_cost_usd
    below = " (child runs included)" if led.sub_tokens or led.sub_cost_usd else ""
    parts = []
    if led.max_tokens is not None and tokens > led.max_tokens:
        parts.append(f"{tokens:,} tokens spent{below}, max_tokens={led.max_tokens:,}")
    if led.max_cost_usd is not None and cost > led.max_cost_usd:
        parts.append(f"${cost:.4f} spent{below}, max_cost_usd={led.max_cost_usd:g}")
    said = "; ".join(parts) or "the budget was crossed"
    return f"budget exceeded ({said}): what was queued or running was stopped"


def _useful(results: list[AgentResult], winner: int | None) -> list[AgentResult]:
    if winner is not None:
        return [r for r in results if r.index == winner]
    return [r for r in results if r.status is AgentStatus.OK]


def spend_fields(
    record: dict[str, str], results: list[AgentResult], winner: int | None
) -> dict[str, Any]:
    """The RoiReport's spend fields. ``results`` empty: the all-ok fast path (nothing wasted
    but what died with a worker is not known there: it reads no envelope)."""
    led = Ledger.of(record)
    if not results:
        useful_tokens, useful_cost, useful_n = led.tokens, led.cost_usd, int(record.get("n") or 0)
    else:
        useful = _useful(results, winner)
        useful_n = len(useful)
        useful_tokens = sum(r.usage.total_tokens for r in useful if r.usage)
        useful_cost = sum(r.usage.cost_usd or 0.0 for r in useful if r.usage)
    cost = led.cost_usd if led.priced else None
    overshoot_tokens = max(0, led.tokens - led.max_tokens) if led.max_tokens is not None else None
    overshoot_cost = (
        max(0.0, led.cost_usd - led.max_cost_usd) if led.max_cost_usd is not None else None
    )
    return {
        "tokens_spent": led.tokens,
        "input_tokens_spent": led.input_tokens,
        "output_tokens_spent": led.output_tokens,
        "tokens_wasted": max(0, led.tokens - useful_tokens),
        "cost_usd_spent": cost,
        "cost_usd_wasted": max(0.0, led.cost_usd - useful_cost) if cost is not None else None,
        "cost_usd_per_useful_result": cost / useful_n if cost is not None and useful_n else None,
        "unpriced_models": led.unpriced,
        "max_tokens": led.max_tokens,
        "max_cost_usd": led.max_cost_usd,
        "budget_overshoot_tokens": overshoot_tokens,
        "budget_overshoot_usd": overshoot_cost,
    }
