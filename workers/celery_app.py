"""The workers' Celery app at module level, for Celery's own command line (settings from
``ORCH_*``, as for ``orchestrator worker``)::

    celery -A workers.celery_app worker -Q agents,agents.echo --without-mingle --without-gossip -E

``-Q`` names the base queue and the queue of every agent the worker has (``orchestrator worker``
computes that list itself: ``workers.app.agent_queues``).
    celery -A workers.celery_app inspect ping
    celery -A workers.celery_app events
    celery -A workers.celery_app purge -Q agents

Importing it builds the app and imports ``ORCH_AGENT_MODULES``: the one module whose import
does that, because ``celery -A`` needs an app at a module's top level.
"""

from workers.app import create_app

app = create_app()

__all__ = ["app"]
