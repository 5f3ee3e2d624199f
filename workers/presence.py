"""Presence: a worker's (or coordinator's) heartbeat and, on workers, the catalog of what it
runs, published to Redis so clients validate payloads without importing worker code; and the
grace-period killer, which runs in a prefork worker's main process."""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import Any

from celery import bootsteps

from workers.grace_killer import GraceKiller
from workers.models import WorkerInfo
from workers.names import catalog_field
from workers.registry import Registry
from workers.settings import Settings
from workers.store import RunStore, make_store

log = logging.getLogger(__name__)


class Heartbeat:
    """A thread that publishes one process's heartbeat until stopped, then removes it."""

    def __init__(self, store: RunStore, info: WorkerInfo, every_s: float) -> None:
        self.store = store
        self.info = info
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="orch-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _beat(self) -> None:
        while True:
            self.info.heartbeat_at = time.time()
            try:
                self.store.beat(self.info)
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
            if role == "worker":
                publish_catalog(store, settings, registry, worker.hostname)
            info = WorkerInfo(
                hostname=worker.hostname,
                role=role,
                queues=sorted(q.name for q in worker.app.amqp.queues.consume_from.values()),
                pool=_pool_name(worker),
                concurrency=int(worker.concurrency or 1),
                pid=os.getpid(),
                heartbeat_at=time.time(),
            )
            self._heartbeat = Heartbeat(store, info, settings.heartbeat_s)
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


def publish_catalog(store: RunStore, settings: Settings, registry: Registry, hostname: str) -> None:
    """Write every registered agent, merger and validator to the catalog hash."""
    now = time.time()
    entries = {
        catalog_field(spec.kind.value, spec.name): spec.catalog_entry(
            settings.agent_queue, hostname, now
        )
        for spec in registry.all()
    }
    store.publish_catalog(entries)
    log.info("published %d catalog entries: %s", len(entries), json.dumps(sorted(entries)))


def _pool_name(worker: Any) -> str:
    """prefork, threads or solo (the names `orchestrator worker --pool` takes)."""
    if not worker.pool:
        return "?"
    name = str(type(worker.pool).__module__).rsplit(".", 1)[-1]
    return {"thread": "threads"}.get(name, name)
