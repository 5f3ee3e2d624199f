"""Remote-control commands that would stop a process or change its queues, refused by default.

Any client of the broker can broadcast Celery's control commands. ``revoke``, ``ping`` and the
inspect commands (Flower's worker pages; ``workers/redact.py`` hides their arguments) keep
working; the commands in ``GUARDED_CONTROL_COMMANDS`` answer with an error instead, unless an
operator names them in ``ORCH_REMOTE_CONTROL__ALLOW``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from celery.worker.consumer.control import Control

from workers.settings_sections import GUARDED_CONTROL_COMMANDS

logger = logging.getLogger(__name__)

Handler = Callable[..., Any]


def _refuser(name: str) -> Handler:
    def refuse(state: Any, **arguments: Any) -> dict[str, str]:
        logger.warning(
            "refused remote-control command %r: allow it with ORCH_REMOTE_CONTROL__ALLOW", name
        )
        return {
            "error": f"remote-control command {name!r} is refused here; an operator can allow "
            f"it with ORCH_REMOTE_CONTROL__ALLOW={name}"
        }

    refuse.__name__ = name
    return refuse


def guarded_handlers(handlers: Mapping[str, Handler], allowed: list[str]) -> dict[str, Handler]:
    """A copy of a control node's handlers where the guarded commands not allowed refuse."""
    out = dict(handlers)
    for name in GUARDED_CONTROL_COMMANDS:
        if name in out and name not in allowed:
            out[name] = _refuser(name)
    return out


def guard_remote_control(consumer: Any, allowed: list[str]) -> None:
    """Give the consumer's control node (when remote control is on) the guarded handlers.

    The node's handlers are Celery's process-wide command registry; the node gets its own copy,
    so nothing else in the process changes.
    """
    for step in consumer.blueprint.steps.values():
        if isinstance(step, Control):
            node = step.box.node
            node.handlers = guarded_handlers(node.handlers, allowed)
