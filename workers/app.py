"""The Celery app factory: safe defaults, agent tasks, catalog publishing, process services."""

from __future__ import annotations

import importlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from celery import Celery, bootsteps
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workers import redact  # noqa: F401 - registers inspect commands that hide arguments
from workers.cancel import CancelListener
from workers.deferred import send_deferred
from workers.errors import ConfigError
from workers.keys import Keys
from workers.models import AgentKind, AgentResult, TaskMeta, WorkerInfo
from workers.registry import BATCH_TASK_PREFIX, REGISTRY, AgentSpec, Registry
from workers.runtime import Services, execute_agent, execute_merge
from workers.settings import Settings
from workers.store import RunStore
from workers.supervisor import GraceKiller

log = logging.getLogger(__name__)
RETRIES = 25


def redis_client(url: str, retries: int = RETRIES) -> redis.Redis:
    """A decoded Redis client with sane timeouts (fork-safe: redis-py resets pools by pid)."""
    # Retries ride out a Redis restart or failover of up to about 20 s (scripts reload by
    # themselves after a restart: redis-py falls back from EVALSHA to SCRIPT LOAD).
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


def make_store(
    settings: Settings, client: redis.Redis | None = None, *, retries: int = RETRIES
) -> RunStore:
    """The run store for these settings (clients pass few retries: they report, not wait)."""
    return RunStore(
        client or redis_client(settings.redis_url(), retries),
        Keys(settings.key_prefix),
        ttl_s=settings.run_ttl_s,
        events_maxlen=settings.events_maxlen,
        recent=settings.recent_runs,
        stats_samples=settings.advisor.stats_samples,
        stats_ttl_s=settings.advisor.stats_ttl_s,
    )


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


class _ProcessServices:
    """Lazily built per process (after fork), shared by every task in it."""

    def __init__(self, app: Celery, settings: Settings, registry: Registry) -> None:
        self.app = app
        self.settings = settings
        self.registry = registry
        self._pid = -1
        self._services: Services | None = None
        self._lock = threading.Lock()

    def get(self) -> Services:
        with self._lock:
            if self._services is None or self._pid != os.getpid():
                self._pid = os.getpid()
                store = make_store(self.settings)
                listener = CancelListener(
                    store.r,
                    store.keys,
                    poll_s=self.settings.cancel.poll_s,
                )
                listener.start()
                self._services = Services(
                    store=store,
                    listener=listener,
                    registry=self.registry,
                    revoke=self._revoke,
                    send=self._send,
                )
            return self._services

    def _send(self, message: str) -> None:
        send_deferred(self.app, message)

    def _revoke(self, task_ids: list[str]) -> None:
        # Our flag makes queued siblings skip anyway; the revoke shows them REVOKED in Flower.
        try:
            self.app.control.revoke(task_ids)
        except Exception as exc:
            log.warning(
                "revoke of %d siblings failed: %s (their cancel flag still holds)",
                len(task_ids),
                exc,
            )


def _register_agent(app: Celery, spec: AgentSpec, services: _ProcessServices, queue: str) -> None:
    def run_agent(self: Any, run_id: str, index: int, payload: Any, meta: dict[str, Any]) -> Any:
        env = execute_agent(
            services.get(),
            spec,
            task_id=self.request.id,
            worker=self.request.hostname or socket.gethostname(),
            run_id=run_id,
            index=index,
            payload=payload,
            meta=TaskMeta.model_validate(meta),
        )
        return _summary(run_id, env)

    app.task(name=spec.task_name, **_agent_task_options(queue))(run_agent)

    def run_batch(self: Any, run_id: str, items: list[Any], meta: dict[str, Any]) -> Any:
        svc = services.get()
        task_meta = TaskMeta.model_validate(meta)
        worker = self.request.hostname or socket.gethostname()
        envs = [
            execute_agent(
                svc,
                spec,
                task_id=f"{run_id}.{index}",
                worker=worker,
                run_id=run_id,
                index=int(index),
                payload=payload,
                meta=task_meta,
            )
            for index, payload in items
        ]
        return [_summary(run_id, env) for env in envs]

    app.task(name=BATCH_TASK_PREFIX + spec.name, **_agent_task_options(queue))(run_batch)


def _agent_task_options(queue: str) -> dict[str, Any]:
    return {
        "bind": True,
        "queue": queue,
        "typing": False,
        # start.lua records the start; Celery's STARTED write would cost two more round trips.
        "track_started": False,
        # State Redis away for longer than the client's own retries: try the message again
        # later rather than lose it (envelopes are recorded once per index, so it is safe).
        "autoretry_for": (redis.ConnectionError, redis.TimeoutError),
        "retry_backoff": 1,
        "retry_backoff_max": 30,
        "max_retries": 10,
    }


def _summary(run_id: str, env: AgentResult) -> dict[str, Any]:
    """The Celery result of a subagent: the envelope itself lives in the run's results hash,
    so the backend (and Flower, and the worker's log line) gets only what identifies it."""
    return {
        "run_id": run_id,
        "index": env.index,
        "status": env.status.value,
        "error": env.error.model_dump(mode="json") if env.error else None,
    }


def _register_merger(app: Celery, spec: AgentSpec, services: _ProcessServices, queue: str) -> None:
    def run_merge(
        self: Any, _members: Any, run_id: str, meta: dict[str, Any], quorum: int
    ) -> dict[str, Any]:
        return execute_merge(
            services.get(),
            spec,
            task_id=self.request.id,
            worker=self.request.hostname or socket.gethostname(),
            run_id=run_id,
            meta=TaskMeta.model_validate(meta),
            quorum=quorum,
        )

    app.task(name=spec.task_name, bind=True, queue=queue, typing=False)(run_merge)


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
        services = _ProcessServices(app, settings, registry)
        for spec in registry.of_kind(AgentKind.AGENT):
            _register_agent(app, spec, services, spec.queue or settings.agent_queue)
        for spec in registry.of_kind(AgentKind.MERGER):
            _register_merger(app, spec, services, spec.queue or settings.agent_queue)
        app.steps["worker"].add(presence_step(settings, registry, "worker"))
    return app


def presence_step(
    settings: Settings, registry: Registry, role: str
) -> type[bootsteps.StartStopStep]:
    class Presence(bootsteps.StartStopStep):  # type: ignore[misc]
        """Publishes the catalog and a heartbeat while the worker runs."""

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self._stop = threading.Event()
            self._thread: threading.Thread | None = None
            self._killer: GraceKiller | None = None

        def start(self, worker: Any) -> None:
            store = make_store(settings)
            hostname = worker.hostname
            if role == "worker":
                publish_catalog(store, settings, registry, hostname)
            info = WorkerInfo(
                hostname=hostname,
                role=role,
                queues=sorted(q.name for q in worker.app.amqp.queues.consume_from.values()),
                pool=_pool_name(worker),
                concurrency=int(worker.concurrency or 1),
                pid=os.getpid(),
                heartbeat_at=time.time(),
            )

            def beat() -> None:
                while True:
                    info.heartbeat_at = time.time()
                    try:
                        store.r.hset(store.keys.workers, hostname, info.model_dump_json())
                    except Exception as exc:
                        log.warning("heartbeat failed: %s", exc)
                    if self._stop.wait(settings.heartbeat_s):
                        break
                try:
                    store.r.hdel(store.keys.workers, hostname)
                except Exception as exc:
                    log.debug("could not remove heartbeat: %s", exc)

            self._thread = threading.Thread(target=beat, name="orch-heartbeat", daemon=True)
            self._thread.start()
            if role == "worker" and info.pool == "prefork":
                self._killer = GraceKiller(
                    worker, store, grace_s=settings.cancel.grace_s, poll_s=settings.cancel.poll_s
                )
                self._killer.start()

        def stop(self, worker: Any) -> None:
            self._stop.set()
            if self._killer is not None:
                self._killer.stop()
            if self._thread is not None:
                self._thread.join(timeout=2)

    return Presence


def publish_catalog(store: RunStore, settings: Settings, registry: Registry, hostname: str) -> None:
    """Write every registered agent, merger and validator to the catalog hash."""
    now = time.time()
    entries = {
        catalog_field(spec.kind, spec.name): (
            spec.catalog_entry(settings.agent_queue, hostname, now).model_dump_json()
        )
        for spec in registry.all()
    }
    if entries:
        store.r.hset(store.keys.catalog, mapping=dict[Any, Any](entries))
    log.info("published %d catalog entries: %s", len(entries), json.dumps(sorted(entries)))


def catalog_field(kind: AgentKind, name: str) -> str:
    """Field of the catalog hash for one entry."""
    return f"{kind.value}:{name}"


def _pool_name(worker: Any) -> str:
    """prefork, threads or solo (the names `orchestrator worker --pool` takes)."""
    if not worker.pool:
        return "?"
    name = str(type(worker.pool).__module__).rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(name, name)
