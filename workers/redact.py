"""Worker inspect commands that never reveal a task's arguments.

Celery's ``inspect reserved``, ``scheduled`` and ``query_task`` (and ``active`` unless asked for
``safe``) answer with every request's full args and kwargs, and Flower's worker page shows the
reserved and scheduled ones. A payload marked ``Task(..., secret=True)`` must never show, so
importing this module (``workers.app`` does) re-registers those commands to answer with the
``argsrepr``/``kwargsrepr`` the message carries instead (``<secret>`` for secret payloads).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from celery.worker import state as worker_state
from celery.worker.control import inspect_command


def _safe(request: Any) -> dict[str, Any]:
    info: dict[str, Any] = request.info(safe=True)
    return info


def active(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """List of tasks currently being executed (arguments as their repr only)."""
    return [_safe(r) for r in state.tset(worker_state.active_requests)]


def reserved(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """List of currently reserved tasks, not including scheduled/active (repr only)."""
    waiting = state.tset(worker_state.reserved_requests) - state.tset(worker_state.active_requests)
    return [_safe(r) for r in waiting]


def scheduled(state: Any, **kwargs: Any) -> list[dict[str, Any]]:
    """List of currently scheduled ETA/countdown tasks (repr only)."""
    out = []
    for waiting in state.consumer.timer.schedule.queue:
        try:
            request = waiting.entry.args[0]
        except (IndexError, TypeError, AttributeError):
            continue
        if hasattr(request, "info"):
            eta = getattr(request, "eta", None)
            out.append(
                {
                    "eta": eta.isoformat() if eta else None,
                    "priority": waiting.priority,
                    "request": _safe(request),
                }
            )
    return out


def query_task(state: Any, ids: Any, **kwargs: Any) -> dict[str, Any]:
    """Query for task information by id (repr only)."""
    wanted = [ids] if isinstance(ids, str) else list(ids or [])
    return {r.id: (_state_of(r), _safe(r)) for r in _requests(wanted)}


def _requests(ids: Iterable[str]) -> Iterator[Any]:
    for task_id in ids:
        request = worker_state.requests.get(task_id)
        if request is not None:
            yield request


def _state_of(request: Any) -> str:
    if request in worker_state.active_requests:
        return "active"
    if request in worker_state.reserved_requests:
        return "reserved"
    if request in worker_state.scheduled_requests:
        return "scheduled"
    return "unknown"


# Registered on import, replacing Celery's own commands of the same names (Panel.data is the
# dict every worker's control handler looks commands up in).
inspect_command(alias="dump_active")(active)
inspect_command(alias="dump_reserved")(reserved)
inspect_command(alias="dump_schedule")(scheduled)
inspect_command(variadic="ids", signature="[id1 [id2 [... [idN]]]]")(query_task)
