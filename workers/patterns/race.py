"""race-then-cancel: a group of racers; the first valid one claims the win (SET NX in
``finish.lua``) in its worker, then stops and revokes its siblings (``workers.ending.win``).
The last failure ends an all-failed race. A hedged race (``hedge_after_s``) tells each racer
its turn in its meta; ``workers/hedging.py`` waits it out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from celery import Celery

from workers import ending
from workers.errors import InvalidRequest
from workers.models import AgentKind, CatalogEntry, Pattern, TaskMeta
from workers.patterns.base import Completion, Expansion, PatternSpec, Timing, refuse_gather_options

if TYPE_CHECKING:
    from workers.request import OrchestrationRequest


def first_valid(ends: Sequence[float], ok_rates: Sequence[float]) -> float:
    """Expected moment of the first valid result, given one arrives (else the last end)."""
    p_none, weighted = 1.0, 0.0
    for end, ok in sorted(zip(ends, ok_rates, strict=True)):
        weighted += end * ok * p_none
        p_none *= 1.0 - ok
    p_any = 1.0 - p_none
    return weighted / p_any if p_any > 0 else max(ends)


def in_order(durations: Sequence[float], ok_rates: Sequence[float]) -> float:
    """Expected time of trying racers one by one until one is valid."""
    total, p_reach = 0.0, 1.0
    for d, ok in zip(durations, ok_rates, strict=True):
        total += d * p_reach
        p_reach *= 1.0 - ok
    return total


class Race(PatternSpec):
    """First valid result wins; the rest are stopped."""

    pattern: ClassVar[Pattern] = Pattern.RACE
    # Each racer must be stoppable on its own, and a batch would run racers one after another.
    batches: ClassVar[bool] = False
    claims_win: ClassVar[bool] = True
    # Identical racers make sense for a nondeterministic agent: a warning, not a failure.
    duplicates_fail: ClassVar[bool] = False
    report_note: ClassVar[str | None] = (
        "(race: speedup, actual and predicted, compares with trying the racers one by one in "
        "order until the first valid one; 'vs winner alone' with running only the racer that "
        "won)"
    )

    def check_options(self, req: OrchestrationRequest) -> None:
        refuse_gather_options(req)

    def consumer(self, req: OrchestrationRequest) -> tuple[AgentKind, str] | None:
        return (AgentKind.VALIDATOR, req.validate_with) if req.validate_with else None

    def record_fields(self, req: OrchestrationRequest) -> dict[str, str]:
        if req.hedge_after_s is None:
            return {}
        return {"hedge_after_s": repr(req.hedge_after_s), "hedge": req.hedge or ""}

    def expand(
        self,
        app: Celery,
        req: OrchestrationRequest,
        entries: list[CatalogEntry],
        merger: CatalogEntry | None,
        meta: TaskMeta,
    ) -> Expansion:
        """The racers, each told its hedge turn (a chain, run one after another, has none)."""
        if req.hedge is not None and req.hedge_after_s is None:
            # Admission resolves a percentile into hedge_after_s; a request that reached the
            # coordinator without it (no history, no fallback) must not run unhedged silently.
            raise InvalidRequest(
                f"hedge={req.hedge!r} was not resolved: the racers' agents have too little "
                "duration history; pass hedge_after_s=<seconds> (also as the fallback)"
            )
        hedged = meta.model_copy(update={"hedge_after_s": req.hedge_after_s})
        return super().expand(app, req, entries, merger, hedged)

    def on_all_reported(self, done: Completion) -> None:
        ending.fail_race(done.store, done.run_id)

    def progress(self, done: int, n: int, *, merged: bool, decided: bool) -> tuple[int, int]:
        return (n, n) if decided else (done, n)  # decided: the rest is being stopped

    def timing(
        self,
        durations: Sequence[float],
        starts: Sequence[float],
        ends: Sequence[float],
        ok_rates: Sequence[float],
        *,
        merge_mean_s: float,
        merge_wall_s: float,
    ) -> Timing:
        if not any(ok_rates):
            ok_rates = [1.0] * len(durations)  # history says nothing valid: time it as if all were
        won = first_valid(ends, ok_rates)
        return Timing(
            parallel_s=won,
            sequential_s=in_order(durations, ok_rates),
            # Losers are paid until the win stops them.
            cost_s=sum(min(d, max(0.0, won - s)) for d, s in zip(durations, starts, strict=True)),
        )

    def marginal_speedup_fails(self) -> bool:
        # Racers of similar times: the first alone would usually do, at a fraction of the cost.
        return True


RACE = Race()
