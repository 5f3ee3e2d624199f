"""Worker side: the Celery app, the agent registry and the task runtime.

Runs on every worker machine. Never imports :mod:`orchestrator`.
"""

from workers.app import agent_queues, create_app, load_agent_modules
from workers.context import AgentContext
from workers.errors import (
    BrokerUnavailable,
    ConfigError,
    InvalidPayload,
    InvalidRequest,
    LoopBlocked,
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
from workers.models import (
    AgentKind,
    AgentResult,
    AgentStatus,
    CatalogEntry,
    ErrorInfo,
    Execution,
    Pattern,
    Prediction,
    RoiReport,
    RunParent,
    RunProgress,
    RunResult,
    RunStatus,
    TaskMeta,
    Usage,
    Verdict,
    WorkerInfo,
)
from workers.names import Keys
from workers.presence import presence_step
from workers.registry import REGISTRY, AgentSpec, Registry, agent, merger, validator
from workers.request import OrchestrationRequest, TaskSpec
from workers.routing import Route
from workers.run_tree import RunTree, TreeTotals
from workers.settings import CancelSettings, FlowerSettings, Settings
from workers.store import RunStore, make_store

__all__ = [
    "REGISTRY",
    "AgentContext",
    "AgentKind",
    "AgentResult",
    "AgentSpec",
    "AgentStatus",
    "BrokerUnavailable",
    "CancelSettings",
    "CatalogEntry",
    "ConfigError",
    "ErrorInfo",
    "Execution",
    "FlowerSettings",
    "InvalidPayload",
    "InvalidRequest",
    "Keys",
    "LoopBlocked",
    "ModelCallFailed",
    "OrchestrationRequest",
    "OrchestratorError",
    "ParallelismDoesNotPay",
    "Pattern",
    "Prediction",
    "Registry",
    "RoiReport",
    "Route",
    "RunFailed",
    "RunLost",
    "RunNotFound",
    "RunParent",
    "RunProgress",
    "RunResult",
    "RunStatus",
    "RunStore",
    "RunTimedOut",
    "RunTree",
    "Settings",
    "TaskCancelled",
    "TaskMeta",
    "TaskSpec",
    "TreeLimitExceeded",
    "TreeTotals",
    "UnknownAgent",
    "Usage",
    "Verdict",
    "WorkerInfo",
    "WouldDeadlock",
    "agent",
    "agent_queues",
    "create_app",
    "load_agent_modules",
    "make_store",
    "merger",
    "presence_step",
    "validator",
]
