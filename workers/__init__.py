"""Worker side: the Celery app, the agent registry and the task runtime.

Runs on every worker machine. Never imports :mod:`orchestrator`.
"""

from workers.app import agent_queues, create_app, load_agent_modules, make_store, presence_step
from workers.errors import (
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
from workers.keys import Keys
from workers.models import (
    AgentKind,
    AgentResult,
    AgentStatus,
    CatalogEntry,
    ErrorInfo,
    Pattern,
    RoiReport,
    RunProgress,
    RunResult,
    RunStatus,
    TaskMeta,
    WorkerInfo,
)
from workers.registry import REGISTRY, AgentSpec, Registry, agent, merger, validator
from workers.runtime import AgentContext
from workers.settings import CancelSettings, FlowerSettings, Settings
from workers.store import RunStore

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
    "FlowerSettings",
    "InvalidPayload",
    "InvalidRequest",
    "Keys",
    "OrchestratorError",
    "Pattern",
    "Registry",
    "RoiReport",
    "RunFailed",
    "RunNotFound",
    "RunProgress",
    "RunResult",
    "RunStatus",
    "RunStore",
    "RunTimedOut",
    "Settings",
    "TaskCancelled",
    "TaskMeta",
    "UnknownAgent",
    "WorkerInfo",
    "agent",
    "agent_queues",
    "create_app",
    "load_agent_modules",
    "make_store",
    "merger",
    "presence_step",
    "validator",
]
