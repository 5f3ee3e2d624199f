"""The coordinator: Celery tasks on the ``orchestrator`` queue that validate a request, write its
run record and expand it into a canvas. It is the root of every orchestration in Flower."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from typing import Any

from celery import Celery, bootsteps
from pydantic import ValidationError

from orchestrator.catalog import Catalog
from orchestrator.patterns import build_gather, build_race, build_spawn
from orchestrator.patterns.common import Expansion
from orchestrator.patterns.sequential import build_sequential
from orchestrator.preflight import PreflightSource, apply_policy
from orchestrator.recovery import RECOVERABLE, recover, remember_payloads
from orchestrator.request import OrchestrationRequest
from orchestrator.runs import expire_run
from workers.app import make_store
from workers.deferred import deferred_message
from workers.errors import OrchestratorError, ParallelismDoesNotPay, RunNotFound
from workers.models import AgentKind, Execution, Pattern, RunStatus, TaskMeta
from workers.settings import Settings
from workers.stats import Sample, pattern_sample, queue_samples
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
        # Subagents per message: set by the caller, or by adaptive batching at pre-flight.
        "batching": str(req.batch_size) if req.batch_size and req.batch_size > 1 else "",
    }


def expand(
    app: Celery,
    catalog: Catalog,
    req: OrchestrationRequest,
    deadline_at: float,
    *,
    sequential: bool = False,
) -> Expansion:
    """Check the request against the catalog and build its canvas (a chain if sequential).

    Payloads a Python client already validated (``payloads_checked``) are not validated again
    here: it is the slowest step before the first message goes out, and every worker validates
    its input against the model anyway (a bad one becomes an InvalidPayload envelope).
    """
    if not req.payloads_checked:
        catalog.check_request(
            req.pattern,
            [(t.agent, t.payload) for t in req.tasks],
            req.merge,
            req.validate_with,
        )
    elif req.merge:
        catalog.get(AgentKind.MERGER, req.merge)
    if req.payloads_checked and req.validate_with:
        catalog.get(AgentKind.VALIDATOR, req.validate_with)
    entries = [catalog.get(AgentKind.AGENT, t.agent) for t in req.tasks]
    meta = TaskMeta(
        pattern=req.pattern,
        n=len(req.tasks),
        queued_at=time.time(),
        deadline_at=deadline_at,
        validate_with=req.validate_with,
    )
    if sequential:
        merger = catalog.get(AgentKind.MERGER, req.merge) if req.merge else None
        return build_sequential(app, req, entries, merger, meta)
    if req.pattern is Pattern.SPAWN:
        return build_spawn(app, req, entries, meta)
    if req.pattern is Pattern.RACE:
        return build_race(app, req, entries, meta)
    assert req.merge is not None
    return build_gather(app, req, entries, catalog.get(AgentKind.MERGER, req.merge), meta)


class Coordinator:
    """State and behaviour behind the coordinator's tasks."""

    def __init__(
        self,
        app: Celery,
        settings: Settings,
        *,
        store: RunStore | None = None,
        catalog: Catalog | None = None,
        raise_send_errors: bool = False,
    ) -> None:
        """``raise_send_errors``: after ending a run whose send failed, raise the error too
        (a client expanding its own run reports it to its caller)."""
        self.app = app
        self.settings = settings
        self.raise_send_errors = raise_send_errors
        self._store = store
        self._catalog = catalog

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
            size = len(json.dumps(request))
            if size > self.settings.max_request_bytes:
                raise ValueError(
                    f"request is {size} bytes, over ORCH_MAX_REQUEST_BYTES "
                    f"{self.settings.max_request_bytes}"
                )
            req = OrchestrationRequest.model_validate(request)
        except (ValidationError, ValueError, TypeError) as exc:
            return self._reject(request, exc)
        deadline_s = req.deadline_s or self.settings.default_deadline_s
        deadline_at = req.created_at + deadline_s
        # One round trip for everything the coordinator must know before expanding.
        pipe = store.r.pipeline(transaction=False)
        pipe.exists(store.keys.result(req.run_id))
        pipe.hmget(store.keys.run(req.run_id), ["run_id", "expanded_at", "execution"])
        ended, (known, expanded, execution) = pipe.execute()
        if ended:
            return {"run_id": req.run_id, "skipped": "run already ended"}
        if not known:
            refused = self._record_new(req, deadline_at)  # sent by a non-Python client
            if refused is not None:
                return {"run_id": req.run_id, "error": refused}
            execution = store.r.hget(store.keys.run(req.run_id), "execution")
        elif expanded:
            return {"run_id": req.run_id, "skipped": "already expanded (redelivered message)"}
        sequential = execution == Execution.SEQUENTIAL.value
        try:
            if deadline_s > self.settings.max_deadline_s:
                raise OrchestratorError(
                    f"deadline_s {deadline_s} exceeds ORCH_MAX_DEADLINE_S "
                    f"{self.settings.max_deadline_s}"
                )
            expansion = expand(self.app, self.catalog, req, deadline_at, sequential=sequential)
        except OrchestratorError as exc:
            store.finalize(req.run_id, RunStatus.FAILED, error=f"{type(exc).__name__}: {exc}")
            return {"run_id": req.run_id, "error": str(exc)}
        # Record 'running' before any subtask can finish and end the run.
        # ...and the merger's message, which the last member to report sends.
        store.update_run(
            req.run_id,
            status=RunStatus.RUNNING.value,
            queued_at=repr(expansion.meta.queued_at),
            coordinator=socket.gethostname(),
            **({"then": deferred_message(expansion.then)} if expansion.then is not None else {}),
        )
        try:
            expansion.send(self.app, group_id=f"{req.run_id}.group")
        except Exception as exc:
            # The broker went away for longer than the publish retries: end the run now, with
            # the reason, and stop whatever part of it was sent, rather than leave it to its
            # deadline. (If the state Redis is gone too, this raises and the deadline decides.)
            reason = (
                f"the broker failed while the subtasks were being sent ({type(exc).__name__}: "
                f"{exc}); nothing of this run will run: submit it again once the broker is back"
            )
            store.request_cancel(req.run_id, reason, ending=RunStatus.FAILED)
            store.finalize(req.run_id, RunStatus.FAILED, error=reason)
            log.error("run %s: %s", req.run_id, reason)
            if self.raise_send_errors:
                raise
            return {"run_id": req.run_id, "error": reason}
        expanded_at = time.time()
        samples: list[Sample] = []
        if not sequential:  # a chain sends only its first link: no dispatch time to learn
            queued_at = expansion.meta.queued_at
            samples.append(
                pattern_sample(
                    req.pattern.value,
                    queued_at - req.created_at,
                    expanded_at - queued_at,
                    len(req.tasks),
                )
            )
        # Bookkeeping after the send, in one round trip.
        n, events = str(len(req.tasks)), store.keys.events(req.run_id)
        pipe = store.r.pipeline(transaction=False)
        pipe.hset(store.keys.run(req.run_id), "expanded_at", repr(expanded_at))
        for kind in ("queued", "expanded"):  # every subtask message sent
            pipe.xadd(
                events,
                {"type": kind, "n": n, "ts": repr(expanded_at)},
                maxlen=store.maxlen,
                approximate=True,
            )
        queue_samples(pipe, store, samples)
        if not sequential and req.pattern.value in RECOVERABLE:
            remember_payloads(pipe, store, req.run_id, [t.payload for t in req.tasks])
            if expansion.batches:  # which subtasks go down with a lost batch message
                pipe.hset(store.keys.run(req.run_id), "batches", json.dumps(expansion.batches))
        pipe.execute()
        # The deadline is enforced by DeadlineSweeper (keys.deadlines), not by an ETA message:
        # an ETA task sits unacknowledged in one coordinator for the whole deadline, comes back
        # after the visibility timeout, and is what a broker connection loss trips over.
        return {
            "run_id": req.run_id,
            "pattern": req.pattern.value,
            "width": len(req.tasks),
            "deadline_at": deadline_at,
        }

    def _record_new(self, req: OrchestrationRequest, deadline_at: float) -> str | None:
        """Record a run sent without a record (a non-Python client), applying its pre-flight
        policy here as the client would have; returns the refusal, if refused."""
        record = run_record(req, deadline_at)
        events: list[dict[str, str]] = []
        refused: str | None = None
        if req.preflight != "off":
            source = PreflightSource(self.store, self.catalog, self.settings)
            try:
                fields, events = apply_policy(source.preflight(req), req)
                record.update(fields)
            except ParallelismDoesNotPay as exc:
                refused = f"ParallelismDoesNotPay: {exc}"
            except OrchestratorError as exc:  # unknown agent, bad payload: expand() says so
                log.info("run %s: no pre-flight (%s)", req.run_id, exc)
        self.store.create_run(record, events)
        if refused is not None:
            self.store.finalize(req.run_id, RunStatus.FAILED, error=refused)
        return refused

    def _reject(self, request: Any, exc: Exception) -> dict[str, Any]:
        """A malformed request: fail its run if it has a usable record, else only log."""
        # Never the input: this is the task's result in Flower, and payloads may be secret.
        detail = (
            exc.errors(include_url=False, include_input=False)[:5]
            if isinstance(exc, ValidationError)
            else str(exc)
        )
        msg = f"malformed orchestration request: {detail}"[:2000]
        run_id = request.get("run_id") if isinstance(request, dict) else None
        log.error("%s (run %r)", msg, run_id)
        if isinstance(run_id, str) and self.store.r.exists(self.store.keys.run(run_id)):
            self.store.finalize(run_id, RunStatus.FAILED, error=msg)
        return {"run_id": run_id, "error": msg}

    def deadline(self, run_id: str) -> dict[str, Any]:
        """End the run if its deadline passed and it is still open."""
        result = expire_run(self.store, self.revoke, run_id)
        return {"run_id": run_id, "timed_out": result is not None}

    def sweep(self, limit: int = 100) -> int:
        """Expire every open run whose deadline has passed; returns how many were ended."""
        store = self.store
        due: list[str] = store.r.zrangebyscore(  # type: ignore[assignment]
            store.keys.deadlines, "-inf", time.time(), start=0, num=limit
        )
        ended = 0
        for run_id in due:
            try:
                if expire_run(store, self.revoke, run_id) is not None:
                    ended += 1
            except RunNotFound:
                pass  # its record expired: nothing left to end
            if store.result(run_id) is not None or not store.r.exists(store.keys.run(run_id)):
                store.r.zrem(store.keys.deadlines, run_id)
        return ended


#: Sweeper rounds between looks for lost workers (every second at the default interval).
RECOVER_EVERY = 4


class DeadlineSweeper:
    """A thread in each coordinator that ends overdue runs (any coordinator may do it)."""

    def __init__(self, coord: Coordinator, interval_s: float = 0.25) -> None:
        self.coord = coord
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orch-deadlines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        rounds = 0
        while not self._stop.wait(self.interval_s):
            rounds += 1
            try:
                self.coord.sweep()
                if rounds % RECOVER_EVERY == 0:
                    coord = self.coord
                    recover(coord.app, coord.store, coord.catalog, coord.settings.lost_worker_s)
            except Exception as exc:  # Redis away: the next round tries again
                log.warning("deadline sweep failed: %s", exc)


def sweeper_step(coord: Coordinator) -> type[bootsteps.StartStopStep]:
    """A worker bootstep running the DeadlineSweeper while the coordinator runs."""

    class Sweeper(bootsteps.StartStopStep):  # type: ignore[misc]
        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.sweeper = DeadlineSweeper(coord)

        def start(self, worker: Any) -> None:
            self.sweeper.start()

        def stop(self, worker: Any) -> None:
            self.sweeper.stop()

    return Sweeper


def register_coordinator(app: Celery, settings: Settings) -> Coordinator:
    """Register ``orchestrator.run`` and ``orchestrator.deadline`` on the app."""
    coord = Coordinator(app, settings)

    def run(request: dict[str, Any]) -> dict[str, Any]:
        return coord.run(request)

    def deadline(run_id: str) -> dict[str, Any]:
        return coord.deadline(run_id)

    # Its summary reaches Flower in the task-succeeded event; nobody reads it from the backend,
    # and the run record already says it started: skip both writes (four round trips).
    app.task(
        name="orchestrator.run",
        queue=settings.coordinator_queue,
        ignore_result=True,
        track_started=False,
    )(run)
    app.task(name="orchestrator.deadline", queue=settings.coordinator_queue)(deadline)
    app.steps["worker"].add(sweeper_step(coord))

    return coord
