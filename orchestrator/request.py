"""The tasks an application hands to ``Orchestrator``; the wire request they become is
:class:`workers.request.OrchestrationRequest` (re-exported here)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from workers.request import (
    MAX_TASKS,
    OrchestrationRequest,
    PreflightPolicy,
    TaskSpec,
    new_run_id,
)

__all__ = [
    "MAX_TASKS",
    "OrchestrationRequest",
    "PreflightPolicy",
    "Task",
    "TaskSpec",
    "new_run_id",
]


class Task:
    """One unit of work for one agent: ``Task("researcher", {"topic": "x"})``.

    ``payload`` is a dict or an instance of the agent's input model. ``secret=True`` keeps the
    payload out of Flower and logs.
    """

    __slots__ = ("agent", "depends_on", "payload", "secret")

    def __init__(
        self,
        agent: str,
        payload: dict[str, Any] | BaseModel | None = None,
        *,
        depends_on: tuple[int, ...] | list[int] = (),
        secret: bool = False,
    ) -> None:
        self.agent = agent
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        self.payload: dict[str, Any] = dict(payload or {})
        self.depends_on = tuple(depends_on)
        self.secret = secret

    def __repr__(self) -> str:
        shown = "<secret>" if self.secret else repr(self.payload)
        return f"Task({self.agent!r}, {shown})"

    def spec(self) -> TaskSpec:
        """The wire form."""
        return TaskSpec(
            agent=self.agent,
            payload=self.payload,
            depends_on=list(self.depends_on),
            secret=self.secret,
        )
