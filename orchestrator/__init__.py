"""Application side: submit orchestrations (parallel-spawn, gather-then-merge,
race-then-cancel) to Celery workers and follow them."""

from orchestrator.catalog import Catalog
from orchestrator.client import Orchestrator
from orchestrator.embedded import EmbeddedRedis, EmbeddedStack
from orchestrator.errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidPayload,
    InvalidRequest,
    OrchestratorError,
    RunFailed,
    RunNotFound,
    RunTimedOut,
    TaskCancelled,
    UnknownAgent,
)
from orchestrator.request import OrchestrationRequest, Task, TaskSpec
from orchestrator.runs import Run
from workers.models import (
    AgentResult,
    AgentStatus,
    Pattern,
    RoiReport,
    RunProgress,
    RunResult,
    RunStatus,
)
from workers.settings import Settings

__all__ = [
    "AgentResult",
    "AgentStatus",
    "BrokerUnavailable",
    "Catalog",
    "ConfigError",
    "EmbeddedRedis",
    "EmbeddedStack",
    "InvalidPayload",
    "InvalidRequest",
    "OrchestrationRequest",
    "Orchestrator",
    "OrchestratorError",
    "Pattern",
    "RoiReport",
    "Run",
    "RunFailed",
    "RunNotFound",
    "RunProgress",
    "RunResult",
    "RunStatus",
    "RunTimedOut",
    "Settings",
    "Task",
    "TaskCancelled",
    "TaskSpec",
    "UnknownAgent",
]
