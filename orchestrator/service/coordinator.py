"""The coordinator: the ``orchestrator.run`` task on the coordinator queue validates a request,
records its run and expands it into its members. It is the root of every orchestration in
Flower."""

from __future__ import annotations

import json
import logging
import re
import socket
import time
from typing import Any

from celery import Celery
from pydantic import ValidationError

from orchestrator.catalog import Catalog
from orchestrator.service.admission import Admission, deadline_s_of
from workers import ending
from workers.errors import OrchestratorError
from workers.models import AgentKind, Execution, RunStatus, TaskMeta
from workers.names import group_id
from workers.patterns import Expansion, merger_message, pattern_of
from workers.request import OrchestrationRequest
from workers.settings import Settings
from workers.stats import Sample, pattern_sample
from workers.store import RunStore, make_store

log = logging.getLogger(__name__)

#: How long a coordinator's claim on sending a run lasts without renewal (it renews it every
#: send batch): after a coordinator dies mid-send, another one goes on about this much later.
LEASE_S = 5.0
#: A run id a malformed request can be tied to.
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def expand(
    app: Celery,
    catalog: Catalog,
    req: OrchestrationRequest,
    deadline_at: float,
    *,
    sequential: bool = False,
) -> Expansion:
    """Check the request against the catalog and build its members (a chain if sequential).

    Payloads a Python client already validated (``payloads_checked``) are not validated again
    here: it is the slowest step before the first message goes out, and every worker validates
    its input against the model anyway (a bad one becomes an InvalidPayload envelope).
    """
    if not req.payloads_checked:
        tasks = [(t.agent, t.payload) for t in req.tasks]
        catalog.check_request(req.pattern, tasks, req.merge, req.validate_with)
    elif req.validate_with:
        catalog.get(AgentKind.VALIDATOR, req.validate_with)
    merger = catalog.get(AgentKind.MERGER, req.merge) if req.merge else None
    entries = [catalog.get(AgentKind.AGENT, t.agent) for t in req.tasks]
    meta = TaskMeta(
        pattern=req.pattern,
        n=len(req.tasks),
        queued_at=time.time(),
        deadline_at=deadline_at,
        validate_with=req.validate_with,
        ancestors=req.parent.ancestors if req.parent else [],
    )
    spec = pattern_of(req.pattern)
    build = spec.expand_sequential if sequential else spec.expand
    return build(app, req, entries, merger, meta)


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
            self._catalog = Catalog(self.store, self.settings.catalog_stale_s)
        return self._catalog

    def revoke(self, task_ids: list[str]) -> None:
        """Best-effort Celery revoke (Flower shows REVOKED; our flags stop the tasks)."""
        try:
            self.app.control.revoke(task_ids)
        except Exception as exc:
            log.warning("revoke failed: %s (cancel flags still hold)", exc)

    def run(self, request: dict[str, Any]) -> dict[str, Any]:
        """Validate, record and expand one orchestration."""
        try:
            wire = json.dumps(request)
            size = len(wire)
            if size > self.settings.max_request_bytes:
                raise ValueError(
                    f"request is {size} bytes, over ORCH_MAX_REQUEST_BYTES "
                    f"{self.settings.max_request_bytes}"
                )
            req = OrchestrationRequest.model_validate(request)
        except (ValidationError, ValueError, TypeError) as exc:
            return self._reject(request, exc)
        ended, known, expanded, execution = self.store.expansion_state(req.run_id)
        if ended:
            return {"run_id": req.run_id, "skipped": "run already ended"}
        if not known:
            req.created_at = time.time()  # the server's clock, not the sender's
            refused = self._admit_unrecorded(req, wire)
            if refused is not None:
                return {"run_id": req.run_id, "error": refused}
            execution = self.store.execution_of(req.run_id)
        elif expanded:
            return {"run_id": req.run_id, "skipped": "already expanded (redelivered message)"}
        sequential = execution == Execution.SEQUENTIAL.value
        return self._expand_and_send(req, sequential)

    def _expand_and_send(
        self, req: OrchestrationRequest, sequential: bool, *, start: int = 0, leased: bool = False
    ) -> dict[str, Any]:
        """Expand and send from member ``start`` on (``leased``: this coordinator already holds
        the run's lease: it is resuming a stalled send)."""
        deadline_s = deadline_s_of(req, self.settings)
        deadline_at = req.created_at + deadline_s
        try:
            if deadline_s > self.settings.max_deadline_s:
                raise OrchestratorError(
                    f"deadline_s {deadline_s} exceeds ORCH_MAX_DEADLINE_S "
                    f"{self.settings.max_deadline_s}"
                )
            expansion = expand(self.app, self.catalog, req, deadline_at, sequential=sequential)
        except OrchestratorError as exc:
            ending.fail(self.store, req.run_id, f"{type(exc).__name__}: {exc}")
            return {"run_id": req.run_id, "error": str(exc)}
        # Record 'running' before any subtask can finish and end the run, and the merger's
        # message, which the last member to report sends; and take the lease on sending it.
        host = socket.gethostname()
        fields: dict[str, Any] = {
            "status": RunStatus.RUNNING.value,
            "queued_at": repr(expansion.meta.queued_at),
            "coordinator": host,
        }
        if expansion.merger is not None:
            fields["merger_message"] = merger_message(expansion.merger)
        if not self.store.start_expansion(req.run_id, host, LEASE_S, fields) and not leased:
            return {"run_id": req.run_id, "skipped": "another coordinator is sending it"}

        def progress(sent: int) -> None:
            self.store.expansion_progress(req.run_id, sent, host, LEASE_S)

        try:
            expansion.send(self.app, group_id(req.run_id), start=start, on_flush=progress)
        except Exception as exc:
            return self._send_failed(req, exc)
        self._bookkeep(req, expansion, sequential)
        # The deadline is enforced by the sweeper (orchestrator/service/sweeper.py), not by an
        # ETA message: an ETA task sits unacknowledged in one coordinator for the whole
        # deadline, comes back after the visibility timeout, and is what a broker connection
        # loss trips over.
        return {
            "run_id": req.run_id,
            "pattern": req.pattern.value,
            "width": len(req.tasks),
            "deadline_s": deadline_s,
            "execution": (Execution.SEQUENTIAL if sequential else Execution.PARALLEL).value,
        }

    def _send_failed(self, req: OrchestrationRequest, exc: Exception) -> dict[str, Any]:
        """The broker went away for longer than the publish retries: end the run now, with the
        reason, and stop whatever part of it was sent, rather than leave it to its deadline.
        (If the state Redis is gone too, this raises and the deadline decides.)"""
        reason = (
            f"the broker failed while the subtasks were being sent ({type(exc).__name__}: "
            f"{exc}); nothing of this run will run: submit it again once the broker is back"
        )
        ending.fail_send(self.store, self.revoke, req.run_id, reason)
        if self.raise_send_errors:
            raise exc
        return {"run_id": req.run_id, "error": reason}

    def _bookkeep(self, req: OrchestrationRequest, expansion: Expansion, sequential: bool) -> None:
        """After the send, in one round trip: samples, events, what recovery may resend."""
        expanded_at = time.time()
        samples: list[Sample] = []
        recoverable = not sequential and pattern_of(req.pattern).recoverable
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
        self.store.record_expanded(
            req.run_id,
            expanded_at=expanded_at,
            n=len(req.tasks),
            samples=samples,
            payloads=[t.payload for t in req.tasks] if recoverable else None,
            batches=expansion.batches if recoverable else None,
        )

    def _admit_unrecorded(self, req: OrchestrationRequest, wire: str) -> str | None:
        """A run sent without a record (a non-Python client): record it as the client would
        have; a refusal ends it failed."""
        refused = Admission(self.store, self.catalog, self.settings).admit_unrecorded(req, wire)
        if refused is not None:
            ending.fail(self.store, req.run_id, refused)
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
        if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
            log.error("%s (no run id to tie it to: dropped)", msg)
            return {"run_id": None, "error": msg}
        log.error("%s (run %s)", msg, run_id)
        created = request.get("created_at") if isinstance(request, dict) else None
        if ending.fail_unrecorded(self.store, run_id, msg):
            pass  # nobody had recorded it: now a waiter on its done stream hears why
        elif self.store.run_fields(run_id, ["created_at"])[0] == repr(created):
            ending.fail(self.store, run_id, msg)  # the record its own client wrote
        else:
            log.error("run %s: a malformed request names this live run; left alone", run_id)
        return {"run_id": run_id, "error": msg}

    def resume_stalled(self) -> int:
        """Finish sending every run whose coordinator died while sending it (or before it
        started); returns how many were resumed."""
        store = self.store
        host = socket.gethostname()
        resumed = 0
        stalled = store.stalled_expansions(
            store.open_runs(), time.time(), max(self.settings.lost_worker_s, LEASE_S)
        )
        for run_id in stalled:
            if not store.take_expansion(run_id, host, LEASE_S):
                continue  # another coordinator took it
            wire, sent = store.expansion_to_resume(run_id)
            if wire is None:
                continue
            req = OrchestrationRequest.model_validate_json(wire)
            created_at, execution = store.run_fields(run_id, ["created_at", "execution"])
            req.created_at = float(created_at or req.created_at)
            log.warning(
                "run %s: its coordinator stopped after sending %d of its messages; sending the "
                "rest",
                run_id,
                sent,
            )
            sequential = execution == Execution.SEQUENTIAL.value
            self._expand_and_send(req, sequential, start=sent, leased=True)
            store.event(run_id, "expansion_resumed", sent_before=str(sent), by=host)
            resumed += 1
        return resumed

    def deadline(self, run_id: str) -> dict[str, Any]:
        """End the run if its deadline passed and it is still open."""
        result = ending.expire(self.store, self.revoke, run_id)
        return {"run_id": run_id, "timed_out": result is not None}


def summary(outcome: dict[str, Any]) -> str:
    """A coordinator's outcome as one line: what Flower shows as ``orchestrator.run``'s result
    (and the worker log's 'succeeded' line), e.g. 'run abc: parallel-spawn of 8 sent; deadline
    in 60 s; page /orchestrations/abc', or why nothing was sent."""
    run = f"run {outcome.get('run_id') or '?'}"
    if "error" in outcome:
        return f"{run}: not run: {outcome['error']}"
    if "skipped" in outcome:
        return f"{run}: nothing sent: {outcome['skipped']}"
    how = " one after another (preflight auto)" if outcome.get("execution") == "sequential" else ""
    # The run's page in the same Flower (orchestrator/flower/): its status, tree and ROI.
    page = f"/orchestrations/{outcome.get('run_id')}"
    return (
        f"{run}: {outcome.get('pattern')} of {outcome.get('width')} sent{how}; deadline in "
        f"{float(outcome.get('deadline_s') or 0):.0f} s; page {page}"
    )
