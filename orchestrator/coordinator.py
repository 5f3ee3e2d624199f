"""The coordinator: Celery tasks on the ``orchestrator`` queue that validate a request, write its
run record and expand it into a canvas. It is the root of every orchestration in Flower."""

from __future__ import annotations

import logging
import socket
import time
from datetime import UTC, datetime
from typing import Any

from celery import Celery
from pydantic import ValidationError

from orchestrator.catalog import Catalog
from orchestrator.patterns import build_gather, build_race, build_spawn
from orchestrator.patterns.common import Expansion
from orchestrator.request import OrchestrationRequest
from orchestrator.runs import expire_run
from workers.app import make_store
from workers.errors import OrchestratorError
from workers.models import AgentKind, Pattern, RunStatus, TaskMeta
from workers.settings import Settings
from workers.store import RunStore

log = logging.getLogger(__name__)


def run_record(req: OrchestrationRequest, deadline_at: float) -> dict[str, Any]:
    """The run record a new run starts with."""
    return {
        "run_id": req.run_id,
        "pattern": req.pattern.value,
        "n": len(req.tasks),
        "created_at": repr(req.created_at),
        "deadline_at": repr(deadline_at),
        "quorum": req.quorum or len(req.tasks),
        "merge": req.merge or "",
        "validate": req.validate_with or "",
        "status": RunStatus.SUBMITTED.value,
        "preflight": req.preflight,
        "agents": [t.agent for t in req.tasks],
        "done": 0,
    }


def expand(
    app: Celery, catalog: Catalog, req: OrchestrationRequest, deadline_at: float
) -> Expansion:
    """Check the request against the catalog and build its canvas."""
    catalog.check_request(
        req.pattern,
        [(t.agent, t.payload) for t in req.tasks],
        req.merge,
        req.validate_with,
    )
    entries = [catalog.get(AgentKind.AGENT, t.agent) for t in req.tasks]
    meta = TaskMeta(
        pattern=req.pattern,
        n=len(req.tasks),
        queued_at=time.time(),
        deadline_at=deadline_at,
        validate_with=req.validate_with,
    )
    if req.pattern is Pattern.SPAWN:
        return build_spawn(app, req, entries, meta)
    if req.pattern is Pattern.RACE:
        return build_race(app, req, entries, meta)
    assert req.merge is not None
    return build_gather(app, req, entries, catalog.get(AgentKind.MERGER, req.merge), meta)


class Coordinator:
    """State and behaviour behind the coordinator's tasks."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._store: RunStore | None = None
        self._catalog: Catalog | None = None

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = make_store(self.settings)
        return self._store

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.store)
        return self._catalog

    def revoke(self, task_ids: list[str]) -> None:
        try:
            self.app.control.revoke(task_ids)
        except Exception as exc:
            log.warning("revoke failed: %s (cancel flags still hold)", exc)

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate, record and expand one orchestration."""
        store = self.store
        try:
            req = OrchestrationRequest.model_validate(request)
        except ValidationError as exc:
            run_id = request.get("run_id") if isinstance(request, dict) else None
            msg = f"malformed orchestration request: {exc.errors()[:5]}"
            log.error("%s (run %s)", msg, run_id)
            return {"run_id": run_id, "error": msg[:2000]}
        deadline_s = req.deadline_s or self.settings.default_deadline_s
        deadline_at = req.created_at + deadline_s
        if store.result(req.run_id) is not None:
            return {"run_id": req.run_id, "skipped": "run already ended"}
        if not store.r.exists(store.keys.run(req.run_id)):
            store.create_run(run_record(req, deadline_at))  # sent by a non-Python client
        elif store.r.hexists(store.keys.run(req.run_id), "expanded_at"):
            return {"run_id": req.run_id, "skipped": "already expanded (redelivered message)"}
        try:
            if deadline_s > self.settings.max_deadline_s:
                raise OrchestratorError(
                    f"deadline_s {deadline_s} exceeds ORCH_MAX_DEADLINE_S "
                    f"{self.settings.max_deadline_s}"
                )
            expansion = expand(self.app, self.catalog, req, deadline_at)
        except OrchestratorError as exc:
            store.finalize(req.run_id, RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
            return {"run_id": req.run_id, "error": str(exc)}
        # Record 'running' before any subtask can finish and end the run.
        store.update_run(
            req.run_id,
            status=RunStatus.RUNNING.value,
            queued_at=repr(expansion.meta.queued_at),
            coordinator=socket.gethostname(),
        )
        expansion.canvas.apply_async()
        store.update_run(req.run_id, expanded_at=repr(time.time()))
        store.event(req.run_id, "expanded", n=str(len(req.tasks)))
        self.app.send_task(
            "orchestrator.deadline",
            args=[req.run_id],
            queue=self.settings.coordinator_queue,
            eta=datetime.fromtimestamp(deadline_at, tz=UTC),
            task_id=f"{req.run_id}.deadline",
            argsrepr=f"run={req.run_id}",
        )
        return {
            "run_id": req.run_id,
            "pattern": req.pattern.value,
            "width": len(req.tasks),
            "deadline_at": deadline_at,
        }

    def deadline(self, run_id: str) -> dict[str, Any]:
        """End the run if its deadline passed and it is still open."""
        result = expire_run(self.store, self.revoke, run_id)
        return {"run_id": run_id, "timed_out": result is not None}


def register_coordinator(app: Celery, settings: Settings) -> Coordinator:
    """Register ``orchestrator.run`` and ``orchestrator.deadline`` on the app."""
    coord = Coordinator(app, settings)

    def run(request: dict[str, Any]) -> dict[str, Any]:
        return coord.run(request)

    def deadline(run_id: str) -> dict[str, Any]:
        return coord.deadline(run_id)

    app.task(name="orchestrator.run", queue=settings.coordinator_queue)(run)
    app.task(name="orchestrator.deadline", queue=settings.coordinator_queue)(deadline)

    return coord
