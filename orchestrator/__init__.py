"""Application side: submit orchestrations (parallel-spawn, gather-then-merge,
race-then-cancel) to Celery workers and follow them."""

from orchestrator.advisor import Capacity, Check, CheckStatus, Preflight, advise
from orchestrator.api import Orchestrator, Run
from orchestrator.catalog import Catalog
from orchestrator.embedded import EmbeddedRedis, EmbeddedStack
from orchestrator.errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidPayload,
    InvalidRequest,
    ModelCallFailed,
    OrchestratorError,
    ParallelismDoesNotPay,
    RunFailed,
    RunLost,
    RunNotFound,
    RunTimedOut,
    TaskCancelled,
    TreeLimitExceeded,
    UnknownAgent,
    WouldDeadlock,
)
from orchestrator.events import EventType, RunEvent
from orchestrator.request import OrchestrationRequest, Task, TaskSpec
from workers.models import (
    AgentResult,
    AgentStatus,
    Execution,
    Pattern,
    Prediction,
    RoiReport,
    RunParent,
    RunProgress,
    RunResult,
    RunStatus,
    Usage,
    Verdict,
)
from workers.routing import Route, Routed
from workers.run_tree import RunTree, TreeTotals
from workers.settings import Settings

__all__ = [
    "AgentResult",
    "AgentStatus",
    "BrokerUnavailable",
    "Capacity",
    "Catalog",
    "Check",
    "CheckStatus",
    "ConfigError",
    "EmbeddedRedis",
    "EmbeddedStack",
    "EventType",
    "Execution",
    "InvalidPayload",
    "InvalidRequest",
    "ModelCallFailed",
    "OrchestrationRequest",
    "Orchestrator",
    "OrchestratorError",
    "ParallelismDoesNotPay",
    "Pattern",
    "Prediction",
    "Preflight",
    "RoiReport",
    "Route",
    "Routed",
    "Run",
    "RunEvent",
    "RunFailed",
    "RunLost",
    "RunNotFound",
    "RunParent",
    "RunProgress",
    "RunResult",
    "RunStatus",
    "RunTimedOut",
    "RunTree",
    "Settings",
    "Task",
    "TaskCancelled",
    "TaskSpec",
    "TreeLimitExceeded",
    "TreeTotals",
    "UnknownAgent",
    "Usage",
    "Verdict",
    "WouldDeadlock",
    "advise",
]
