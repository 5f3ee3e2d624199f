"""The error tree (defined in :mod:`workers.errors`, the lower layer) as seen by applications."""

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

__all__ = [
    "BrokerUnavailable",
    "ConfigError",
    "InvalidPayload",
    "InvalidRequest",
    "LoopBlocked",
    "ModelCallFailed",
    "OrchestratorError",
    "ParallelismDoesNotPay",
    "RunFailed",
    "RunLost",
    "RunNotFound",
    "RunTimedOut",
    "TaskCancelled",
    "TreeLimitExceeded",
    "UnknownAgent",
    "WouldDeadlock",
]
