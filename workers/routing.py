"""Routing, the pattern the others grow from: a classifier agent reads the request and names
the specialist (its output is :class:`workers.models.Route`), then that specialist answers.

``orch.route(Task(...), via="triage")`` runs the built-in agent below: two child runs, the
classifier's and the specialist's, so the run's tree shows what each cost. The specialist is
checked against the catalog when it is submitted: a route naming an agent nobody serves fails
the run with UnknownAgent, naming the classifier that chose it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.context import AgentContext
from workers.errors import OrchestratorError, UnknownAgent
from workers.registry import agent
from workers.request import TaskSpec

__all__ = ["ROUTER", "Route", "RouteFailed", "RouteRequest", "Routed"]


class Route(BaseModel):
    """What a router (classifier) agent returns (``@agent(..., output=Route)``): the agent
    that should handle the request, and its payload (checked against the catalog)."""

    model_config = ConfigDict(extra="forbid")

    agent: str = Field(min_length=1, max_length=200)
    payload: dict[str, Any] = Field(default_factory=dict)


#: The built-in router's agent name (every worker registers it).
ROUTER = "orchestrator.route"


class RouteRequest(BaseModel):
    """The router's input: the classifier, and the request it classifies."""

    model_config = ConfigDict(extra="forbid")

    via: str = Field(min_length=1, max_length=200, description="The classifier agent.")
    asked: str = Field("", max_length=200, description="The task's agent name, as asked.")
    payload: dict[str, Any] = Field(default_factory=dict)
    secret: bool = False


class Routed(BaseModel):
    """The router's output: the specialist's output, who gave it, and the two child runs."""

    agent: str
    output: Any = None
    classifier_run: str
    specialist_run: str


class RouteFailed(OrchestratorError):
    """The classifier failed, returned no Route, or the specialist failed."""


@agent(ROUTER, input=RouteRequest, output=Routed, description="Classify, then ask the specialist.")
async def route(req: RouteRequest, ctx: AgentContext) -> Routed:
    """The classifier's child run, then the specialist's."""
    spec = TaskSpec(agent=req.via, payload=req.payload, secret=req.secret)
    picked = await ctx.spawn([spec]).wait_async()
    first = picked.results[0] if picked.results else None
    if first is None or first.output is None:
        why = first.error.message if first and first.error else picked.error
        raise RouteFailed(f"classifier {req.via!r} gave no route (run {picked.run_id}): {why}")
    try:
        chosen = Route.model_validate(first.output)
    except ValidationError as exc:
        raise RouteFailed(
            f"classifier {req.via!r} must return Route(agent=..., payload=...) "
            f"(@agent(..., output=Route)); its output does not fit: {exc.error_count()} errors"
        ) from None
    payload = chosen.payload or req.payload
    try:
        run = ctx.spawn([TaskSpec(agent=chosen.agent, payload=payload, secret=req.secret)])
    except UnknownAgent as exc:
        raise UnknownAgent(
            f"classifier {req.via!r} routed to {chosen.agent!r}: {exc}",
            name=chosen.agent,
            kind=exc.kind,
            known=exc.known,
        ) from None
    answered = await run.wait_async()
    done = answered.results[0] if answered.results else None
    if done is None or done.output is None:
        why = done.error.message if done and done.error else answered.error
        raise RouteFailed(f"specialist {chosen.agent!r} failed (run {answered.run_id}): {why}")
    return Routed(
        agent=chosen.agent,
        output=done.output,
        classifier_run=picked.run_id,
        specialist_run=answered.run_id,
    )
