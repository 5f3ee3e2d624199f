"""The coordinators' Celery app at module level, for Celery's own command line (settings from
``ORCH_*``, as for ``orchestrator coordinator``)::

    celery -A orchestrator.celery_app worker -Q orchestrator -P threads -c 4 -E
    celery -A orchestrator.celery_app inspect active

Importing it builds the app and registers the coordinator's tasks and steps on it.
"""

from orchestrator.service import register_coordinator
from workers.app import create_app
from workers.presence import presence_step
from workers.registry import REGISTRY

app = create_app(load_agents=False)
register_coordinator(app, app.orch_settings)
app.steps["worker"].add(presence_step(app.orch_settings, REGISTRY, "coordinator"))

__all__ = ["app"]
