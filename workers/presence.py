"""Presence: a worker's (or coordinator's) heartbeat and, on workers, the catalog of what it
runs, published to Redis so clients validate payloads without importing worker code; and the
grace-period killer, which runs in a prefork worker's main process."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Collection
from typing import Any

from celery import bootsteps

from workers.errors import ConfigError
from workers.grace_killer import GraceKiller
from workers.models import WorkerInfo
from workers.names import catalog_field
from workers.pools import runs_async_here
from workers.ratelimit import RateLimits, parse_rate_limits
from workers.registry import Registry
from workers.settings import Settings
from workers.store import RunStore, make_store

log = logging.getLogger(__name__)


class CatalogPublisher:
    """What one worker publishes to the catalog, and publishing it (again)."""

    def __init__(self, store: RunStore, settings: Settings, registry: Registry, hostname: str):
        self.store = store
        self.settings = settings
        self.registry = registry
        self.hostname = hostname
        #: The catalog fields of this worker's registry (what a beat checks is still there).
        self.fields = frozenset(catalog_fields(registry))

    def publish(self, only: Collection[str] | None = None) -> None:
        """Write this worker's entries (``only``: those fields) to the catalog hash."""
        publish_catalog(self.store, self.settings, self.registry, self.hostname, only=only)


class Heartbeat:
    """A thread that publishes one process's heartbeat until stopped, then removes it.

    A worker's beat also checks that the catalog still holds its entries, and publishes again
    what is missing: a state server restarted without persistence (or flushed) knows every
    agent again within one heartbeat, instead of refusing every submit with UnknownAgent.
    """

    def __init__(
        self,
        store: RunStore,
        info: WorkerInfo,
        every_s: float,
        catalog: CatalogPublisher | None = None,
    ) -> None:
        self.store = store
        self.info = info
        self.every_s = every_s
        self.catalog = catalog
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="orch-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _beat(self) -> None:
        fields = self.catalog.fields if self.catalog is not None else frozenset()
        while True:
            self.info.heartbeat_at = time.time()
            try:
                missing = self.store.beat(self.info, fields)
                if missing and self.catalog is not None:
                    log.warning(
                        "the catalog lost %d of this worker's entries (state server restarted "
                        "without persistence, or flushed?): publishing them again",
                        len(missing),
                    )
                    self.catalog.publish(missing)
            except Exception as exc:  # Redis away: the next beat tries again
                log.warning("heartbeat failed: %s", exc)
            if self._stop.wait(self.every_s):
                break
        try:
            self.store.leave(self.info.hostname)
        except Exception as exc:
            log.debug("could not remove heartbeat: %s", exc)


def presence_step(
    settings: Settings, registry: Registry, role: str
) -> type[bootsteps.StartStopStep]:
    """A worker bootstep: catalog (workers), heartbeat, and the grace-period killer (prefork)."""

    class Presence(bootsteps.StartStopStep):  # type: ignore[misc]
        """Publishes the catalog and a heartbeat while the worker runs."""

        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self._heartbeat: Heartbeat | None = None
            self._killer: GraceKiller | None = None

        def start(self, worker: Any) -> None:
            store = make_store(settings)
            catalog = None
            if role == "worker":
                catalog = CatalogPublisher(store, settings, registry, worker.hostname)
                catalog.publish()
            info = WorkerInfo(
                hostname=worker.hostname,
                role=role,
                queues=sorted(q.name for q in worker.app.amqp.queues.consume_from.values()),
                pool=_pool_name(worker),
                concurrency=int(worker.concurrency or 1),
                pid=os.getpid(),
                heartbeat_at=time.time(),
                serves=sorted(catalog_fields(registry)) if role == "worker" else None,
                **_async_capacity(worker, settings),
            )
            self._heartbeat = Heartbeat(store, info, settings.heartbeat_s, catalog)
            self._heartbeat.start()
            if role == "worker" and info.pool == "prefork":
                self._killer = GraceKiller(
                    worker, store, grace_s=settings.cancel.grace_s, poll_s=settings.cancel.poll_s
                )
                self._killer.start()

        def stop(self, worker: Any) -> None:
            if self._killer is not None:
                self._killer.stop()
            if self._heartbeat is not None:
                self._heartbeat.stop()

    return Presence


def catalog_fields(registry: Registry) -> list[str]:
    """The catalog fields of every registered agent, merger and validator."""
    return [catalog_field(spec.kind.value, spec.name) for spec in registry.all()]


def publish_catalog(
    store: RunStore,
    settings: Settings,
    registry: Registry,
    hostname: str,
    *,
    only: Collection[str] | None = None,
) -> None:
    """Write every registered agent, merger and validator (``only``: those fields) to the
    catalog hash."""
    now = time.time()
    entries = {}
    try:
        limits = parse_rate_limits(settings.rate_limits)
    except ConfigError:  # the first throttle says so (ConfigError); the catalog goes on
        limits = RateLimits()
    for spec in registry.all():
        field = catalog_field(spec.kind.value, spec.name)
        if only is None or field in only:
            entries[field] = spec.catalog_entry(settings.agent_queue, hostname, now, limits)
    store.publish_catalog(entries)
    log.info("published %d catalog entries: %s", len(entries), json.dumps(sorted(entries)))


def _async_capacity(worker: Any, settings: Settings) -> dict[str, Any]:
    """The queues whose subagents run on this process's event loop, and how many at once."""
    if not runs_async_here(worker.pool):
        return {}
    queues = sorted(getattr(worker.app, "orch_async_queues", set()))
    return {"async_queues": queues, "async_slots": settings.aio.max_in_flight} if queues else {}


def _pool_name(worker: Any) -> str:
    """prefork, threads or solo (the names `orchestrator worker --pool` takes)."""
    if not worker.pool:
        return "?"
    for cls in type(worker.pool).__mro__:  # ours (workers/pools.py) subclass Celery's
        name = str(cls.__module__)
        if name.startswith("celery.concurrency."):
            short = name.rsplit(".", 1)[-1]
            return {"thread": "threads"}.get(short, short)
    return type(worker.pool).__name__
