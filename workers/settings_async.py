"""The ``ORCH_AIO__*`` section: how ``async def`` subagents run in a worker process."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class AsyncSettings(BaseModel):
    """``async def`` agents, mergers and validators: one event loop per worker process."""

    model_config = ConfigDict(extra="forbid")

    max_in_flight: int = Field(
        500,
        ge=1,
        le=100_000,
        description="Async subagents one worker process runs at once on its event loop, besides "
        "(not within) the pool's --concurrency slots for sync ones: the prefetch of the async "
        "agents' queues. Size it by what the provider and the process's memory allow.",
    )
    blocked_warn_s: float = Field(
        0.5,
        gt=0,
        description="An async subagent that keeps the event loop busy this long without an "
        "await (a blocking call inside async def) is logged, with where it blocks.",
    )
    blocked_limit_s: float = Field(
        10.0,
        gt=0,
        description="An async subagent that blocks the event loop this long is stopped: its "
        "envelope is an error (LoopBlocked) and the other subagents go on.",
    )

    @model_validator(mode="after")
    def _warn_before_limit(self) -> AsyncSettings:
        if self.blocked_warn_s > self.blocked_limit_s:
            self.blocked_warn_s = self.blocked_limit_s
        return self
