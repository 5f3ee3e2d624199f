"""The orchestration request on the wire: what a client sends to the coordinator (also from
non-Python code). The client-side ``Task`` that builds its tasks is ``orchestrator.Task``."""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from workers.models import Pattern, RunParent
from workers.patterns import pattern_of

PreflightPolicy = Literal["off", "warn", "refuse", "auto"]
#: The percentiles of an agent's measured run time a race may hedge after (``hedge="p95"``).
HedgePercentile = Literal["p50", "p90", "p95", "p99"]
MAX_TASKS = 10_000


class TaskSpec(BaseModel):
    """Wire form of a Task."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)
    depends_on: list[int] = Field(
        default_factory=list, description="Indices of tasks this one needs (advisor input)."
    )
    secret: bool = False


def new_run_id() -> str:
    """A short, unique, URL-safe run id."""
    return uuid.uuid4().hex[:16]


class OrchestrationRequest(BaseModel):
    """A complete orchestration, as sent to the ``orchestrator.run`` task."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    version: Literal[1] = 1
    run_id: str = Field(default_factory=new_run_id, pattern=r"^[A-Za-z0-9_-]{1,64}$")
    pattern: Pattern
    tasks: list[TaskSpec] = Field(min_length=1, max_length=MAX_TASKS)
    merge: str | None = Field(None, description="Merger name (gather-then-merge only).")
    validate_with: str | None = Field(
        None, alias="validate", description="Validator name (race-then-cancel only)."
    )
    quorum: int | None = Field(
        None, ge=1, description="Successful members a gather needs (default: all)."
    )
    early: bool = Field(
        False,
        description="gather-then-merge with a quorum: merge as soon as that many valid outputs "
        "arrived and stop the rest (their spend is wasted, 'over quorum').",
    )
    hedge_after_s: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="race-then-cancel: racer i starts i * hedge_after_s after the run was sent, "
        "and only if no valid result arrived by then (else it is skipped, never run). With "
        "hedge, the fallback used when the agent has too little history.",
    )
    hedge: HedgePercentile | None = Field(
        None,
        description="race-then-cancel: hedge after this percentile of the racers' measured run "
        "time (the largest over their agents), resolved at admission into hedge_after_s.",
    )
    deadline_s: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Deadline of the whole run."
    )
    preflight: PreflightPolicy = "warn"
    payloads_checked: bool = Field(
        False,
        description="Set by the Python client after validating every payload against the "
        "catalog; the coordinator then skips that step (workers validate inputs anyway).",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        le=10_000,
        description="Subagents per Celery message (spawn and gather; races never batch). "
        "Tiny subagents lose to per-message overhead; each still gets its own envelope.",
    )
    max_tokens: int | None = Field(
        None,
        ge=1,
        description="Token budget of the run: once every subagent's spend (ctx.record_usage) "
        "crosses it, what is queued or running is stopped and the run ends budget_exceeded.",
    )
    max_cost_usd: float | None = Field(
        None, gt=0, allow_inf_nan=False, description="Dollar budget of the run (ORCH_PRICES)."
    )
    parent: RunParent | None = Field(
        None,
        description="Set when a subagent starts this run (ctx.spawn/gather/race): the run "
        "answers to its parent's deadline, budget and cancel.",
    )
    created_at: float = Field(
        default_factory=time.time,
        allow_inf_nan=False,
        description="When the client created the run; a coordinator that records the run "
        "itself (a client that wrote no record) uses its own clock instead.",
    )

    @model_validator(mode="after")
    def _pattern_options(self) -> OrchestrationRequest:
        pattern_of(self.pattern).check_options(self)
        n = len(self.tasks)
        if self.quorum is not None and self.quorum > n:
            raise ValueError(f"quorum {self.quorum} is larger than the {n} tasks")
        if self.early and self.quorum is None:
            raise ValueError("early=True needs quorum=k: the number of valid outputs to merge")
        for i, t in enumerate(self.tasks):
            bad = [d for d in t.depends_on if not 0 <= d < n or d == i]
            if bad:
                raise ValueError(f"task #{i} depends_on {bad}: not other tasks of this request")
        return self
