"""The Celery app factory: safe defaults (JSON only, at-least-once), and on workers the agents'
tasks and the presence step."""

from __future__ import annotations

import importlib

from celery import Celery

from workers import redact  # noqa: F401 - registers inspect commands that hide arguments
from workers.errors import ConfigError
from workers.models import AgentKind
from workers.presence import presence_step
from workers.registry import REGISTRY, Registry
from workers.settings import Settings
from workers.tasks import register_agents


def load_agent_modules(modules: list[str]) -> None:
    """Import the modules that register agents, with a clear error when one is missing."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigError(
                f"cannot import agent module {name!r} named in ORCH_AGENT_MODULES: {exc}",
                setting="ORCH_AGENT_MODULES",
            ) from exc


def configure(app: Celery, settings: Settings) -> None:
    """JSON only, at-least-once delivery, events on for Flower."""
    visibility = int(settings.max_deadline_s * 1.25 + 60)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_accept_content=["json"],
        event_serializer="json",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_send_task_events=True,
        task_send_sent_event=True,
        task_track_started=True,
        # Not extended: it would store every task's raw args/kwargs (secret payloads too) in
        # the result backend. Flower shows argsrepr/kwargsrepr from the task events instead.
        result_extended=False,
        result_expires=settings.run_ttl_s,
        task_default_queue=settings.agent_queue,
        broker_transport_options={"visibility_timeout": visibility},
        result_backend_transport_options={"visibility_timeout": visibility},
        broker_connection_retry_on_startup=True,
        # On a broker connection loss let running subtasks finish: their envelopes land in the
        # state Redis (retried across a restart), and a redelivery later finds them and skips.
        # Cancelling them instead would lose the work until the visibility timeout.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
    )


def agent_queues(settings: Settings, registry: Registry = REGISTRY) -> list[str]:
    """Every queue the registered agents and mergers use."""
    queues = {
        s.queue or settings.agent_queue
        for s in registry.all()
        if s.kind in (AgentKind.AGENT, AgentKind.MERGER)
    }
    return sorted(queues or {settings.agent_queue})


def create_app(
    settings: Settings | None = None, *, load_agents: bool = True, registry: Registry = REGISTRY
) -> Celery:
    """A configured Celery app; with load_agents, the agents' tasks are registered on it."""
    settings = settings or Settings()
    app = Celery(
        "orchestrator", broker=settings.require_broker(), backend=settings.celery_backend()
    )
    configure(app, settings)
    app.orch_settings = settings
    if load_agents:
        load_agent_modules(settings.agent_modules)
        register_agents(app, settings, registry)
        app.steps["worker"].add(presence_step(settings, registry, "worker"))
    return app
