"""Pydantic models that cross the wire (task messages, Redis records, results)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from workers.errors import RunFailed
from workers.lineage import RunParent as RunParent  # re-exported: RunResult.parent
from workers.names import catalog_field


class Pattern(StrEnum):
    """The three orchestration patterns."""

    SPAWN = "parallel-spawn"
    GATHER = "gather-then-merge"
    RACE = "race-then-cancel"


class AgentStatus(StrEnum):
    """Outcome of one subagent."""

    OK = "ok"
    ERROR = "error"  # the agent raised, or its input was rejected
    INVALID = "invalid"  # output failed its model or the race validator (the error trap)
    CANCELLED = "cancelled"  # stopped while running, or lost the race
    LOST = "lost"  # never reported (worker gone, deadline passed while queued)
    SKIPPED = "skipped"  # never started: the run was already decided or cancelled


class RunStatus(StrEnum):
    """Lifecycle of a run; all but the first two are final."""

    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    #: A token or dollar budget was crossed: what finished is kept, the rest was stopped.
    BUDGET_EXCEEDED = "budget_exceeded"

    @property
    def final(self) -> bool:
        """True once the run can no longer change."""
        return self not in (RunStatus.SUBMITTED, RunStatus.RUNNING)


class ErrorInfo(BaseModel):
    """An error as data: what happened and what to do."""

    model_config = ConfigDict(extra="forbid")

    type: str
    message: str
    hint: str | None = None


class AgentKind(StrEnum):
    """What a catalog entry is."""

    AGENT = "agent"
    MERGER = "merger"
    VALIDATOR = "validator"


class CatalogEntry(BaseModel):
    """What workers publish about each registered callable."""

    name: str
    kind: AgentKind
    task_name: str | None
    description: str = ""
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None
    queue: str
    #: An ``async def``: many run at once per worker process (ORCH_AIO__MAX_IN_FLIGHT).
    is_async: bool = False
    published_by: str = ""
    published_at: float = 0.0
    #: The model its calls use, as ``@agent(model=...)`` declares it.
    model: str | None = None
    #: The fleet-wide limits its calls are under (ORCH_RATE_LIMITS' entries by name, as the
    #: publishing worker has them): what pre-flight plans with.
    rate_limits: dict[str, dict[str, float]] = Field(default_factory=dict)


class WorkerInfo(BaseModel):
    """Heartbeat record of one worker (or coordinator) process."""

    hostname: str
    role: str
    queues: list[str]
    pool: str
    concurrency: int
    pid: int
    heartbeat_at: float
    serves: list[str] | None = Field(
        None,
        description="Catalog fields (agent:<name>, ...) of this worker's registry; None in a "
        "heartbeat of an older build, judged by its queues alone.",
    )
    async_queues: list[str] = Field(
        default_factory=list,
        description="Queues whose async subagents run on the event loop, async_slots at once.",
    )
    async_slots: int = 0

    def slots_for(self, queue: str) -> int:
        """How many subagents of ``queue`` this process runs at once."""
        return self.async_slots if queue in self.async_queues else self.concurrency

    def serves_entry(self, entry: CatalogEntry) -> bool:
        """Whether this process can run what ``entry`` describes: a worker that consumes the
        entry's queue and has it (a shared queue may carry agents it lacks)."""
        if self.role != "worker" or entry.queue not in self.queues:
            return False
        return self.serves is None or catalog_field(entry.kind.value, entry.name) in self.serves


class Usage(BaseModel):
    """Tokens and dollars one subagent spent (``ctx.record_usage`` adds to it)."""

    model: str | None = Field(None, description="The model (the last one, when several).")
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = Field(
        None, description="Dollars; None when no model of it had a price (never guessed)."
    )
    unpriced: list[str] = Field(
        default_factory=list, description="Models it used that have no price (ORCH_PRICES)."
    )

    @property
    def total_tokens(self) -> int:
        """Input plus output tokens."""
        return self.input_tokens + self.output_tokens


class TaskMeta(BaseModel):
    """Per-subtask context sent with every agent message."""

    pattern: Pattern
    n: int
    queued_at: float
    deadline_at: float
    validate_with: str | None = None
    #: The runs above this one (a child run's; the root first): its spend counts toward their
    #: budgets.
    ancestors: list[str] = Field(default_factory=list)
    #: A hedged race: member i starts at queued_at + i * hedge_after_s if still undecided.
    hedge_after_s: float | None = None


class AgentResult(BaseModel):
    """The envelope of one subagent: never an exception, always one of these."""

    index: int
    task_id: str
    agent: str
    status: AgentStatus
    output: Any = None
    error: ErrorInfo | None = None
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    attempt: int = 0
    cancel_requested_at: float | None = Field(
        None, description="When this subtask was asked to stop (race won, cancel, deadline)."
    )
    usage: Usage | None = Field(
        None,
        description="Tokens and dollars this attempt spent, also when it was cancelled, failed, "
        "was invalid or lost a race: partial spend is spend.",
    )
    throttled_s: float = Field(
        0.0,
        description="Seconds this subagent waited for a turn under a fleet-wide rate limit "
        "(ORCH_RATE_LIMITS): part of its run time, not of its queue wait.",
    )
    retries: int = Field(0, description="Failed calls it tried again (workers.retries).")

    @property
    def ran_s(self) -> float:
        """Seconds of work this subagent consumed."""
        if self.started_at is None or self.finished_at is None:
            return 0.0
        return max(0.0, self.finished_at - self.started_at)

    @property
    def cancel_latency_s(self) -> float | None:
        """Seconds between the stop request and this subagent actually stopping."""
        if self.cancel_requested_at is None or self.finished_at is None:
            return None
        if self.started_at is None:
            return None
        return max(0.0, self.finished_at - self.cancel_requested_at)


class Verdict(StrEnum):
    """The pre-flight advisor's answer to "should I spawn this?"."""

    PAYS = "pays"
    MARGINAL = "marginal"
    DOES_NOT_PAY = "does-not-pay"
    UNKNOWN = "unknown"  # no duration history for some agent yet


class Execution(StrEnum):
    """How a run was executed: as its pattern, or one task after another (preflight='auto')."""

    PARALLEL = "parallel"
    SEQUENTIAL = "sequential"


class Prediction(BaseModel):
    """The pre-flight verdict and numbers stored on the run record at submit."""

    verdict: Verdict
    policy: str = "warn"
    execution: Execution = Execution.PARALLEL
    sequential_s: float | None = None
    parallel_s: float | None = Field(None, description="Predicted wall time, submit to finish.")
    speedup: float | None = None
    cost_s: float | None = Field(None, description="Predicted worker-seconds spent.")
    tokens: int | None = Field(
        None, description="Predicted tokens of the plan (None: some agent has no token history)."
    )
    cost_usd: float | None = Field(
        None, description="Predicted dollars (None: unknown, or some agent has no price)."
    )
    loser_tokens: int | None = Field(
        None,
        description="Race: tokens the losers burn before they stop (up to the winner's finish, "
        "plus their token rate x the stop latency).",
    )
    loser_stop_tokens: int | None = Field(
        None, description="Race: of loser_tokens, those spent after the stop request."
    )
    reasons: list[str] = Field(default_factory=list, description="Checks that warned or failed.")


class RoiReport(BaseModel):
    """What parallelism bought: measured after every run (``workers/run_result.py`` ``roi``)."""

    n: int
    wall_s: float = Field(description="Submit to finish.")
    sequential_estimate_s: float = Field(
        description="What the one-at-a-time alternative would have taken. Spawn and gather: the "
        "sum of subagent run times plus the merge. Race: trying racers one after another in "
        "index order until the first valid one, i.e. the run times of racers 0..k summed, k "
        "being the winner or an earlier racer that finished valid after the win. A racer "
        "before k that was stopped counts the time it ran until stopped and is taken as not "
        "valid (its verdict is unknown; run on, it would have cost more), one that never "
        "started counts 0. A race with no winner: every racer's run time."
    )
    speedup: float = Field(description="sequential_estimate_s / wall_s.")
    speedup_vs_winner: float | None = Field(
        None,
        description="Race only: the winner's run time / wall_s (what running the racer that "
        "turned out best, alone, would have taken; knowable only afterwards).",
    )
    efficiency: float = Field(description="Speedup divided by the number of subagents.")
    work_spent_s: float = Field(description="Every subagent's run time, plus the merge.")
    work_wasted_s: float = Field(
        description="Race: the run time of every racer but the winner (failed ones included, "
        "each until it stopped). Spawn and gather: the run time of cancelled subagents."
    )
    merge_s: float = Field(0.0, description="The merger's own run time (gather).")
    merge_wait_s: float = Field(
        0.0,
        description="Gather: the merger's queue wait, from every member reported "
        "(all_reported_at) to the merger starting (merge_started_at; the run's end if it never "
        "started).",
    )
    coordinator_overhead_s: float = Field(description="Submit to the first subagent queued.")
    queue_wait_s: float = Field(0.0, description="Mean time subagents waited in the queue.")
    throttled_s: float = Field(
        0.0,
        description="Seconds the subagents waited for a turn under rate limits, summed (part "
        "of their run time, not of their queue wait).",
    )
    throttled_mean_s: float = Field(0.0, description="throttled_s per subagent.")
    retries: int = Field(0, description="Failed model calls the subagents tried again.")
    cancel_latency_p50_s: float | None = None
    cancel_latency_max_s: float | None = None
    hedge_after_s: float | None = Field(None, description="Hedged race: racer i's delay / i.")
    hedged_started: int | None = Field(None, description="Hedged race: racers that started.")
    hedged_skipped: int | None = Field(
        None, description="Hedged race: racers never started (decided or stopped first)."
    )
    early_quorum: int | None = Field(None, description="gather(early=True): the quorum merged.")
    execution: Execution = Field(
        Execution.PARALLEL, description="'sequential' when preflight='auto' ran it as a chain."
    )
    prediction: Prediction | None = Field(
        None, description="What pre-flight predicted at submit (None with preflight='off')."
    )
    tokens_spent: int = Field(
        0, description="Every token every attempt of every subagent used (the run's ledger)."
    )
    input_tokens_spent: int = 0
    output_tokens_spent: int = 0
    tokens_wasted: int = Field(
        0,
        description="Tokens that bought no kept result: cancelled and skipped subagents, race "
        "losers, failed and invalid outputs, attempts that died.",
    )
    cost_usd_spent: float | None = Field(
        None, description="Dollars spent (None: no model used had a price in ORCH_PRICES)."
    )
    cost_usd_wasted: float | None = None
    cost_usd_per_useful_result: float | None = Field(
        None, description="Dollars spent per kept result (ok outputs; a race's winner)."
    )
    unpriced_models: list[str] = Field(
        default_factory=list, description="Models used that have no price: their cost is unknown."
    )
    max_tokens: int | None = None
    max_cost_usd: float | None = None
    budget_overshoot_tokens: int | None = Field(
        None, description="Tokens spent beyond max_tokens (what was in flight at the crossing)."
    )
    budget_overshoot_usd: float | None = None


class RunResult(BaseModel):
    """The outcome of one orchestration."""

    run_id: str
    pattern: Pattern
    status: RunStatus
    results: list[AgentResult]
    merged: Any = None
    winner: AgentResult | None = None
    error: str | None = None
    created_at: float
    finished_at: float
    report: RoiReport
    parent: RunParent | None = Field(
        None, description="Set on a child run (started by a subagent with ctx.spawn/gather/race)."
    )
    children: list[str] = Field(
        default_factory=list, description="Ids of the child runs this run's subagents started."
    )

    @property
    def ok(self) -> bool:
        """True when the run succeeded."""
        return self.status is RunStatus.SUCCEEDED

    def outputs(self) -> list[Any]:
        """Outputs of the successful subagents, in task order."""
        return [r.output for r in self.results if r.status is AgentStatus.OK]

    def raise_for_status(self) -> RunResult:
        """Return self when succeeded, else raise RunFailed carrying this result."""
        if not self.ok:
            raise RunFailed(
                f"run {self.run_id} ({self.pattern.value}) ended {self.status.value}: {self.error}",
                result=self,
            )
        return self


class StoredRunResult(RunResult):
    """A RunResult as stored in Redis.

    When every subtask had reported as the run ended, its envelopes are not copied: they stay in
    the results hash named by ``results_key`` (complete, and final because the first envelope
    per index wins), and ``results`` is empty. Readers other than this package: take the hash's
    values, order them by ``index``.
    """

    results: list[AgentResult] = Field(default_factory=list)
    results_key: str | None = None


class RunProgress(BaseModel):
    """A live snapshot of a run (Run.status())."""

    run_id: str
    pattern: Pattern
    status: RunStatus
    n: int
    started: int
    finished: int
    counts: dict[str, int]
    created_at: float
    deadline_at: float
    winner: int | None = None
    tokens_spent: int = Field(0, description="The run's ledger so far (every attempt).")
    cost_usd_spent: float | None = Field(None, description="None while nothing was priced.")
    max_tokens: int | None = None
    max_cost_usd: float | None = None
