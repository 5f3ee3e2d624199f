"""The Celery app factory: safe defaults (JSON only, at-least-once), and on workers the agents'
tasks and the presence step."""

from __future__ import annotations

import importlib
import logging
import ssl

from celery import Celery

from workers import redact  # noqa: F401 - registers inspect commands that hide arguments
from workers.async_consumer import AsyncQueues
from workers.errors import ConfigError
from workers.models import AgentKind
from workers.names import Keys
from workers.poison import SINK_OPTION, DeadLetterSink
from workers.pools import POOLS
from workers.presence import presence_step
from workers.registry import REGISTRY, Registry
from workers.settings import Settings
from workers.tasks import register_agents

logger = logging.getLogger(__name__)


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
    """JSON only, at-least-once delivery, events on for Flower; what cannot be read is dropped."""
    visibility = int(settings.max_deadline_s * 1.25 + 60)
    sink = app.orch_dead_letters = DeadLetterSink(settings)
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
        result_backend_transport_options={
            "visibility_timeout": visibility,
            # Celery's own result keys (celery-task-meta-*) under our prefix too.
            "global_keyprefix": Keys(settings.key_prefix).kombu_prefix,
        },
        broker_connection_retry_on_startup=True,
        # On a broker connection loss let running subtasks finish: their envelopes land in the
        # state Redis (retried across a restart), and a redelivery later finds them and skips.
        # Cancelling them instead would lose the work until the visibility timeout.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_hijack_root_logger=False,
        enable_utc=True,
        # Only our task messages run; the rest is dead-lettered (workers/guard.py). Named, not
        # imported: clients never load Celery's consumer.
        worker_consumer="workers.guard:GuardedConsumer",
        # Celery's prefork pool, with async agents on the main process's event loop (`celery
        # worker` without -P, and -P prefork, take it).
        worker_pool=POOLS["prefork"],
    )
    if settings.broker_url and _scheme(settings.broker_url) in _REDIS_BROKERS:
        _guard_redis_transport(app, settings.broker_url, sink, settings.key_prefix)


#: Broker URL schemes kombu serves with its Redis transport (the guarded one replaces it).
_REDIS_BROKERS = ("redis", "rediss")


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def _guard_redis_transport(
    app: Celery, broker_url: str, sink: DeadLetterSink, key_prefix: str
) -> None:
    """Pop items through the guarded transport (workers/transport.py), which drops one it
    cannot read to this app's sink instead of stopping the consumer."""
    app.conf.broker_transport = "workers.transport:Transport"
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        SINK_OPTION: sink.token,
        # Every kombu key (queues, bindings, unacked messages, pidbox channels) under our prefix:
        # two deployments on one Redis, each with its own ORCH_KEY_PREFIX, never meet.
        "global_keyprefix": Keys(key_prefix).kombu_prefix,
    }
    if _scheme(broker_url) == "rediss" and "ssl_cert_reqs" not in broker_url:
        # kombu does this itself for a rediss:// URL without ssl options, but only when the
        # transport comes from the URL's scheme: keep its behaviour (and its warning).
        logger.warning(
            "Secure redis scheme specified (rediss) with no ssl options, defaulting to "
            "insecure SSL behaviour; add ?ssl_cert_reqs=required to ORCH_BROKER_URL"
        )
        app.conf.broker_use_ssl = app.conf.broker_use_ssl or {"ssl_cert_reqs": ssl.CERT_NONE}


def agent_queues(settings: Settings, registry: Registry = REGISTRY) -> list[str]:
    """What a worker consumes: the queue of every agent and merger it has, and the base queue
    (``ORCH_AGENT_QUEUE``), where plain Celery tasks go. Never another agent's queue: a worker
    without an agent never receives its messages."""
    queues = {
        s.queue_in(settings.agent_queue)
        for s in registry.all()
        if s.kind in (AgentKind.AGENT, AgentKind.MERGER)
    }
    return sorted(queues | {settings.agent_queue})


def async_queues(settings: Settings, registry: Registry = REGISTRY) -> set[str]:
    """The queues every agent and merger of which is ``async def``: they get a consumer of
    their own with ORCH_AIO__MAX_IN_FLIGHT prefetch (``workers/async_consumer.py``)."""
    kinds: dict[str, set[bool]] = {}
    for s in registry.all():
        if s.kind in (AgentKind.AGENT, AgentKind.MERGER):
            kinds.setdefault(s.queue_in(settings.agent_queue), set()).add(s.is_async)
    return {q for q, flags in kinds.items() if flags == {True} and q != settings.agent_queue}


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
        # The built-in router (orch.route) is served by every worker.
        load_agent_modules(["workers.routing", *settings.agent_modules])
        register_agents(app, settings, registry)
        app.orch_async_queues = async_queues(settings, registry)
        app.steps["worker"].add(presence_step(settings, registry, "worker"))
        app.steps["consumer"].add(AsyncQueues)
    return app
