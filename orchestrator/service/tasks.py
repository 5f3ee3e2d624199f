"""The coordinator's Celery tasks and its sweeper step, registered on a coordinator's app."""

from __future__ import annotations

from typing import Any

from celery import Celery

from orchestrator.service.coordinator import Coordinator, summary
from orchestrator.service.sweeper import sweeper_step
from workers.names import COORDINATOR_TASK, DEADLINE_TASK
from workers.settings import Settings


def register_coordinator(app: Celery, settings: Settings) -> Coordinator:
    """Register ``orchestrator.run`` and ``orchestrator.deadline`` on the app."""
    coord = Coordinator(app, settings)

    def run(request: dict[str, Any]) -> str:
        return summary(coord.run(request))

    def deadline(run_id: str) -> dict[str, Any]:
        return coord.deadline(run_id)

    # Its summary reaches Flower in the task-succeeded event; nobody reads it from the backend,
    # and the run record already says it started: skip both writes (four round trips).
    app.task(
        name=COORDINATOR_TASK,
        queue=settings.coordinator_queue,
        ignore_result=True,
        track_started=False,
    )(run)
    app.task(name=DEADLINE_TASK, queue=settings.coordinator_queue)(deadline)
    app.steps["worker"].add(sweeper_step(coord))
    return coord
