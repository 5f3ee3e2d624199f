"""How deep a payload may nest: refused at submit with a clear error, before anything else
chokes on it (pydantic, other languages' JSON parsers, the workers' tools)."""

from __future__ import annotations

from typing import Any

from orchestrator.request import OrchestrationRequest
from workers.errors import InvalidRequest

__all__ = ["MAX_PAYLOAD_DEPTH", "check_depth"]

#: Deepest nesting of lists and objects accepted in a payload: pydantic stops serialising at
#: about 255 levels and many JSON parsers (other languages' clients, the workers' tools) at
#: fewer; real inputs are far flatter.
MAX_PAYLOAD_DEPTH = 64


def check_depth(req: OrchestrationRequest, limit: int = MAX_PAYLOAD_DEPTH) -> None:
    """InvalidRequest when a payload nests lists and objects deeper than ``limit``."""
    for i, task in enumerate(req.tasks):
        if _deeper_than(task.payload, limit):
            raise InvalidRequest(
                f"task #{i}: payload for agent {task.agent!r} nests lists/objects more than "
                f"{limit} levels deep, more than JSON tools handle: flatten it, or pass a "
                "reference to stored data instead"
            )


def _deeper_than(value: Any, limit: int) -> bool:
    # Iterative: a payload deep enough to matter would overflow a recursive walk.
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False
