"""The one error tree. Every error says what was wrong and what to do, and carries its facts as
typed attributes (as taskiq's errors do), so callers read ``err.run_id``, not the message.

Errors cross Redis as :class:`workers.models.ErrorInfo`, never pickled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.models import RunResult


class OrchestratorError(Exception):
    """Base of every error this project raises."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(OrchestratorError):
    """Settings are missing or inconsistent; ``setting`` names the one to fix."""

    def __init__(self, message: str, *, setting: str | None = None) -> None:
        super().__init__(message)
        self.setting = setting


class UnknownAgent(OrchestratorError):
    """A task names an agent (or merger, validator) no worker has published."""

    def __init__(
        self,
        message: str,
        *,
        name: str | None = None,
        kind: str | None = None,
        known: list[str] | None = None,
        last_served_at: float | None = None,
        last_served_by: str | None = None,
    ) -> None:
        super().__init__(message)
        self.name = name
        self.kind = kind
        self.known = known or []
        #: When (epoch s) and by which worker a dropped entry was last served.
        self.last_served_at = last_served_at
        self.last_served_by = last_served_by


class InvalidPayload(OrchestratorError):
    """A payload does not match the agent's input schema."""

    def __init__(
        self, message: str, *, agent: str | None = None, errors: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.agent = agent
        self.errors = errors or []


class InvalidRequest(OrchestratorError):
    """An orchestration request is malformed (empty, too large, bad options)."""

    def __init__(self, message: str, *, size: int | None = None) -> None:
        super().__init__(message)
        self.size = size


class TreeLimitExceeded(InvalidRequest):
    """A child run would take its tree over a limit: ``limit`` names the setting
    (``ORCH_TREE__MAX_DEPTH``, ``ORCH_TREE__MAX_SUBAGENTS``), ``value`` what the tree would
    have had, ``allowed`` the limit."""

    def __init__(self, message: str, *, limit: str, value: int, allowed: int) -> None:
        super().__init__(message)
        self.limit = limit
        self.value = value
        self.allowed = allowed


class WouldDeadlock(OrchestratorError):
    """A sync subagent asked to wait for a child run whose subagents need the very worker
    slots that waiting parents hold: waiting would hang until the deadline. ``agents`` are the
    child's sync agents, ``slots`` the slots serving them, ``waiting`` the parents holding
    some."""

    def __init__(
        self, message: str, *, agents: list[str] | None = None, slots: int = 0, waiting: int = 0
    ) -> None:
        super().__init__(message)
        self.agents = agents or []
        self.slots = slots
        self.waiting = waiting


class BrokerUnavailable(OrchestratorError):
    """The broker or the state Redis cannot be reached; ``url`` has no password."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class RunNotFound(OrchestratorError):
    """No run with that id exists (or it expired)."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id

    @classmethod
    def under(cls, run_id: str, prefix: str) -> RunNotFound:
        """The error for an id with no record under ``prefix``, saying what to check."""
        return cls(
            f"no run {run_id!r} under prefix {prefix!r}: wrong id, wrong ORCH_KEY_PREFIX/state "
            "Redis, or the run expired (ORCH_RUN_TTL_S)",
            run_id=run_id,
        )


class RunLost(OrchestratorError):
    """The state server forgot a run while it was being waited on: its record, there when the
    wait began, is gone (a restart without persistence, a flush, or its TTL passed)."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id

    @classmethod
    def of(cls, run_id: str, where: str) -> RunLost:
        """The error for a run whose record disappeared from the state server at ``where``."""
        return cls(
            f"run {run_id!r} was lost by the state server at {where}: its record disappeared "
            "while waiting (the server restarted without persistence, was flushed, or the "
            "record's TTL ORCH_RUN_TTL_S passed). Its result can no longer be recorded: submit "
            "it again. To survive restarts, enable persistence: the embedded server with "
            "EmbeddedRedis(persist=True, workdir=<dir>) (an append-only file replayed on "
            "start), a real Redis with `appendonly yes` (redis.conf, or CONFIG SET appendonly "
            "yes; deploy/ does this) and `maxmemory-policy noeviction`",
            run_id=run_id,
        )


class RunFailed(OrchestratorError):
    """A run ended failed or cancelled; ``result`` holds every subtask's envelope."""

    def __init__(self, message: str, *, result: RunResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class ParallelismDoesNotPay(OrchestratorError):
    """Pre-flight judged the plan not worth running in parallel (policy 'refuse').

    Nothing was enqueued; ``reasons`` lists why and ``preflight`` holds the full verdict
    (an ``orchestrator.Preflight``).
    """

    def __init__(
        self, message: str, *, preflight: Any = None, reasons: list[str] | None = None
    ) -> None:
        super().__init__(message)
        self.preflight = preflight
        self.reasons = reasons or []


class RunTimedOut(OrchestratorError):
    """Waiting for a run took longer than the caller allowed."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id


class SubagentFailed(OrchestratorError):
    """What a worker's task raises after recording an ``error`` or ``invalid`` envelope, so that
    Celery and Flower show that task FAILURE. The run's outcome is the envelope, already
    recorded; nobody needs to catch this. ``indices``: the subtasks that failed (a batch message
    carries several)."""

    def __init__(
        self, message: str, *, run_id: str | None = None, indices: list[int] | None = None
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.indices = indices or []


class LoopBlocked(OrchestratorError):
    """Raised inside an ``async def`` subagent that kept its worker's event loop busy longer
    than ``ORCH_AIO__BLOCKED_LIMIT_S`` (a blocking call inside async def): the other subagents
    on that loop could not run meanwhile. Its envelope is an error naming where it blocked."""

    def __init__(
        self,
        message: str = "blocked the event loop",
        *,
        agent: str | None = None,
        blocked_s: float | None = None,
        where: str | None = None,
    ) -> None:
        super().__init__(message)
        self.agent = agent
        self.blocked_s = blocked_s
        self.where = where


class ModelCallFailed(OrchestratorError):
    """A model provider refused or failed a call (``workers.llm.chat``): ``status`` is its HTTP
    status (None: no answer, e.g. a connection error or a timeout), ``retry_after_s`` what it
    asked to wait (429, 503). The message never holds the API key, nor anything that looks
    like one: providers quote parts of a wrong key."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        model: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.model = model
        self.retry_after_s = retry_after_s


class TaskCancelled(BaseException):
    """Raised inside an agent whose run or subtask was cancelled.

    A BaseException so that an agent's ``except Exception`` does not swallow it.
    """

    def __init__(self, message: str = "cancelled") -> None:
        super().__init__(message)
        self.message = message
