"""The one error tree. Every error says what was wrong and what to do.

Errors cross Redis as :class:`workers.models.ErrorInfo`, never pickled.
"""

from __future__ import annotations

from typing import Any


class OrchestratorError(Exception):
    """Base of every error this project raises."""

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields
        for key, value in fields.items():
            setattr(self, key, value)

    def __str__(self) -> str:
        return self.message


class ConfigError(OrchestratorError):
    """Settings are missing or inconsistent."""


class UnknownAgent(OrchestratorError):
    """A task names an agent (or merger, validator) no worker has published."""


class InvalidPayload(OrchestratorError):
    """A payload does not match the agent's input schema."""


class InvalidRequest(OrchestratorError):
    """An orchestration request is malformed (empty, too large, bad options)."""


class BrokerUnavailable(OrchestratorError):
    """The broker or the state Redis cannot be reached."""


class RunNotFound(OrchestratorError):
    """No run with that id exists (or it expired)."""

    @classmethod
    def under(cls, run_id: str, prefix: str) -> RunNotFound:
        """The error for an id with no record under ``prefix``, saying what to check."""
        return cls(
            f"no run {run_id!r} under prefix {prefix!r}: wrong id, wrong ORCH_KEY_PREFIX/state "
            "Redis, or the run expired (ORCH_RUN_TTL_S)",
            run_id=run_id,
        )


class RunFailed(OrchestratorError):
    """A run ended failed or cancelled; ``result`` holds every subtask's envelope."""


class ParallelismDoesNotPay(OrchestratorError):
    """Pre-flight judged the plan not worth running in parallel (policy 'refuse').

    Nothing was enqueued; ``reasons`` lists why and ``preflight`` holds the full verdict.
    """


class RunTimedOut(OrchestratorError):
    """Waiting for a run took longer than the caller allowed."""


class TaskCancelled(BaseException):
    """Raised inside an agent whose run or subtask was cancelled.

    A BaseException so that an agent's ``except Exception`` does not swallow it.
    """
