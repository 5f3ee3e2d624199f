"""The sections of the settings root (``ORCH_<SECTION>__<NAME>``); ``workers/settings.py``
holds the root and re-exports them."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import NoDecode

from workers.errors import ConfigError


class CancelSettings(BaseModel):
    """How running subtasks are stopped."""

    model_config = ConfigDict(extra="forbid")

    grace_s: float = Field(
        3.0,
        ge=0.0,
        description="Seconds a prefork task may ignore the soft interrupt before its process is "
        "killed (the pool replaces it).",
    )
    poll_s: float = Field(
        0.5,
        gt=0.0,
        description="How often a process re-checks cancel flags of its running tasks, in case a "
        "pub/sub message was missed.",
    )


class AdvisorSettings(BaseModel):
    """The pre-flight advisor and the duration statistics it learns from."""

    model_config = ConfigDict(extra="forbid")

    batch_below_s: float = Field(
        0.005,
        ge=0,
        description="Subagents whose mean run time is below this are packed several per "
        "message (adaptive batching; 0 turns it off). Spawn and gather only.",
    )
    batch_target_s: float = Field(
        0.05, gt=0, description="Work per message that adaptive batching aims for."
    )
    useful_width: int = Field(
        64, ge=1, description="Fan-out beyond which pre-flight warns (more tasks rarely help)."
    )
    pays_speedup: float = Field(
        1.5, gt=1.0, description="Predicted speedup from which a plan is judged 'pays'."
    )
    marginal_speedup: float = Field(
        1.1, gt=0.0, description="Predicted speedup below which a plan is judged 'does-not-pay'."
    )
    substantial_tokens: int = Field(
        5000,
        ge=0,
        description="Mean tokens per subagent (measured: ctx.record_usage) below which a plan "
        "is warned as not substantial (0 turns the warning off).",
    )
    stats_samples: int = Field(
        200, ge=1, le=10_000, description="Recent duration samples kept per agent/merger/pattern."
    )
    stats_ttl_s: int = Field(
        7 * 86_400, gt=0, description="Duration statistics expire after this long without use."
    )
    hedge_min_samples: int = Field(
        20,
        ge=1,
        description="Measured runs an agent needs before race(hedge='p95') trusts its "
        "percentile; with fewer, the race's hedge_after_s is the fallback (none: refused).",
    )


class FlowerSettings(BaseModel):
    """Flower, the operators' web UI."""

    model_config = ConfigDict(extra="forbid")

    port: int = Field(5555, description="Port Flower listens on.")
    address: str = Field("127.0.0.1", description="Address Flower binds to.")
    basic_auth: str | None = Field(
        None, description="'user:password' for Flower's basic auth (required unless local_only)."
    )
    local_only: bool = Field(
        False, description="Allow Flower without auth; only when bound to loopback."
    )

    @field_validator("basic_auth")
    @classmethod
    def _user_and_password(cls, value: str | None) -> str | None:
        # A ConfigError, not a ValueError: pydantic would quote the value (the password).
        if value is None:
            return value
        user, sep, password = value.partition(":")
        if not sep or not user or not password:
            raise ConfigError(
                "ORCH_FLOWER__BASIC_AUTH must be 'user:password' with a non-empty user and a "
                "non-empty password (unset it, with ORCH_FLOWER__LOCAL_ONLY=true, to serve "
                "Flower without auth on loopback only)",
                setting="ORCH_FLOWER__BASIC_AUTH",
            )
        return value


#: Remote-control commands that would stop a worker, change its queues or its limits: refused
#: unless named in ``ORCH_REMOTE_CONTROL__ALLOW`` (any broker client can send them).
GUARDED_CONTROL_COMMANDS = (
    "shutdown",
    "add_consumer",
    "cancel_consumer",
    "pool_restart",
    "autoscale",
    "pool_grow",
    "pool_shrink",
    "rate_limit",
    "time_limit",
    "disable_events",
)


class RemoteControlSettings(BaseModel):
    """Which of Celery's remote-control commands a worker or coordinator obeys."""

    model_config = ConfigDict(extra="forbid")

    allow: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Commands that stop a process or change its queues or limits, allowed from "
        "any broker client (comma separated; e.g. 'shutdown,add_consumer'). Unlisted ones are "
        "refused: " + ", ".join(GUARDED_CONTROL_COMMANDS) + ". revoke, ping and inspect "
        "commands always work.",
    )

    @field_validator("allow", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [c.strip() for c in value.split(",") if c.strip()]
        return value

    @field_validator("allow")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(GUARDED_CONTROL_COMMANDS))
        if unknown:
            raise ValueError(
                f"{unknown} are not guarded remote-control commands: name some of "
                + ", ".join(GUARDED_CONTROL_COMMANDS)
            )
        return value


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
    batch_size: int = Field(
        50,
        ge=0,
        le=10_000,
        description="A spawn or gather of more async subagents than this sends them this many "
        "a message (run at once by the worker that takes it), unless the request names its "
        "batch_size: Celery's cost per message would otherwise dominate. 0 or 1: one a message.",
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


class LedgerSettings(BaseModel):
    """Tokens and dollars: how often a subagent's running spend reaches the run's ledger."""

    model_config = ConfigDict(extra="forbid")

    flush_s: float = Field(
        0.25,
        gt=0,
        le=60,
        description="A subagent's usage reaches the run's ledger (and its budget check) at most "
        "this often, and when it ends: a budget's overshoot is bounded by what the subagents in "
        "flight spend in this long.",
    )


class TreeSettings(BaseModel):
    """Limits of composition (child runs started by subagents), against runaway trees."""

    model_config = ConfigDict(extra="forbid")

    max_depth: int = Field(
        4,
        ge=1,
        le=32,
        description="Deepest child run below a top run (1: subagents may start child runs, "
        "their subagents may not).",
    )
    max_subagents: int = Field(
        2000,
        ge=1,
        description="Subagents of a whole tree (the top run's and every child run's): a child "
        "run that would take the tree over it is refused.",
    )
    waiting_parent_ttl_s: float = Field(
        30.0,
        gt=0,
        description="A sync subagent waiting for its child run is counted as holding its slot "
        "for this long after its last word (renewed while it waits; a dead process's entry "
        "ages out).",
    )


class LlmSettings(BaseModel):
    """The OpenAI-compatible endpoint ``workers.llm.chat`` streams from (the ``[llm]`` extra)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible chat-completions API, e.g. "
        "https://api.openai.com/v1 or http://localhost:8000/v1 (vLLM, Ollama, a gateway).",
    )
    api_key: SecretStr | None = Field(
        None,
        description="Its API key (never logged nor shown; any value for a server that needs "
        "none). Required: OPENAI_API_KEY is never used instead, it would be sent to whatever "
        "base_url names.",
    )
    timeout_s: float = Field(
        120.0, gt=0, description="Longest wait for one model call's next bytes (connect, read)."
    )
