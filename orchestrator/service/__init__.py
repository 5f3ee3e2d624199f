"""The coordinator service: admitting runs, expanding them into their members, the deadline
sweeper and lost-worker recovery. Runs in ``orchestrator coordinator`` processes (and, for narrow
runs, in a client with ``ORCH_CLIENT_EXPAND_MAX_N``)."""

from orchestrator.service.admission import Admission, check_limits, deadline_s_of, run_record
from orchestrator.service.coordinator import Coordinator, expand
from orchestrator.service.recovery import lost_indices, recover
from orchestrator.service.sweeper import DeadlineSweeper, sweep
from orchestrator.service.tasks import register_coordinator

__all__ = [
    "Admission",
    "Coordinator",
    "DeadlineSweeper",
    "check_limits",
    "deadline_s_of",
    "expand",
    "lost_indices",
    "recover",
    "register_coordinator",
    "run_record",
    "sweep",
]
