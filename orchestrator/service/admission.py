"""Admitting a run: its limits, its record and its pre-flight, the same for a client that
submits it and for a coordinator that receives it from a non-Python client."""

from __future__ import annotations

import json
import logging
from typing import Any

from orchestrator.advisor import PreflightSource, apply_policy
from orchestrator.catalog import Catalog
from orchestrator.service.hedging import resolve_hedge
from workers import ending
from workers.errors import (
    InvalidRequest,
    OrchestratorError,
    ParallelismDoesNotPay,
    TreeLimitExceeded,
)
from workers.models import AgentKind, RunStatus
from workers.patterns import pattern_of
from workers.request import OrchestrationRequest
from workers.settings import Settings
from workers.store import RunStore

log = logging.getLogger(__name__)


def deadline_s_of(req: OrchestrationRequest, settings: Settings) -> float:
    """The run's deadline in seconds from its creation (the request's, or the default)."""
    return req.deadline_s or settings.default_deadline_s


def check_limits(req: OrchestrationRequest, settings: Settings, size: int) -> None:
    """InvalidRequest when the request is over a limit (``size``: its JSON in bytes)."""
    deadline_s = deadline_s_of(req, settings)
    if deadline_s > settings.max_deadline_s:
        raise InvalidRequest(
            f"deadline_s {deadline_s} exceeds ORCH_MAX_DEADLINE_S {settings.max_deadline_s}; "
            "raise that setting (it also sizes the broker's visibility timeout) or shorten the "
            "deadline"
        )
    if size > settings.max_request_bytes:
        raise InvalidRequest(
            f"request is {size} bytes, over ORCH_MAX_REQUEST_BYTES {settings.max_request_bytes}: "
            "put large inputs in storage and pass references in the payloads",
            size=size,
        )


def run_record(req: OrchestrationRequest, deadline_at: float) -> dict[str, Any]:
    """The run record a new run starts with."""
    return {
        "run_id": req.run_id,
        "pattern": req.pattern.value,
        "n": len(req.tasks),
        "created_at": repr(req.created_at),
        "deadline_at": repr(deadline_at),
        "quorum": req.quorum or len(req.tasks),
        **({"max_tokens": str(req.max_tokens)} if req.max_tokens else {}),
        **({"max_cost_usd": repr(req.max_cost_usd)} if req.max_cost_usd else {}),
        "merge": req.merge or "",
        "validate": req.validate_with or "",
        "status": RunStatus.SUBMITTED.value,
        "preflight": req.preflight,
        "agents": [t.agent for t in req.tasks],
        # Which subagents' outputs must never be shown (Flower's run pages read it).
        "secret": [i for i, t in enumerate(req.tasks) if t.secret],
        "done": 0,
        # Subagents per message: set by the caller, or by adaptive batching at pre-flight.
        "batching": str(req.batch_size) if req.batch_size and req.batch_size > 1 else "",
        **({"parent": req.parent.model_dump_json()} if req.parent else {}),
        **pattern_of(req.pattern).record_fields(req),  # a race's hedge, an early quorum
    }


def unserved_event(run_id: str, names: list[str]) -> dict[str, str]:
    """A warning, not a refusal: workers may be scaling from zero. Logged and recorded as the
    run's ``unserved`` event."""
    log.warning(
        "run %s: no live worker serves %s yet; its messages wait in their queues until one "
        "starts (ORCH_AGENT_MODULES of the workers must name the module that defines it)",
        run_id,
        ", ".join(repr(n) for n in names),
    )
    return {"type": "unserved", "agents": json.dumps(names)}


def _no_revoke(task_ids: list[str]) -> None:
    """Nothing of a child refused at admission was sent yet."""


class Admission:
    """Records new runs, applying their pre-flight policy."""

    def __init__(self, store: RunStore, catalog: Catalog, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.source = PreflightSource(store, catalog, settings)

    def admit(self, req: OrchestrationRequest, *, checked: bool, wire: str | None = None) -> None:
        """Write the run record with its pre-flight verdict (and ``wire``, the request's JSON,
        which a coordinator needs to finish sending the run if its own coordinator dies).

        Policy 'refuse' raises ParallelismDoesNotPay before anything is written; unknown
        agents and bad payloads raise unless ``checked`` (the caller validated them).
        """
        if req.parent is not None:
            self._admit_child(req)
        if resolve_hedge(req, self.store, self.settings) and wire is not None:
            wire = req.model_dump_json(by_alias=True)  # a resumed send hedges the same
        record = run_record(req, req.created_at + deadline_s_of(req, self.settings))
        events: list[dict[str, str]] = []
        if req.preflight != "off":
            pf, unserved = self.source.judge(req, checked=checked)
            fields, events = apply_policy(pf, req)
            record.update(fields)
        else:
            unserved = self.source.unserved(req)
        if self._batch_async(req):
            record["batching"] = str(req.batch_size)
        if unserved:
            events.append(unserved_event(req.run_id, unserved))
        self.store.create_run(record, events, request=wire)
        if req.parent is not None:
            self._link_child(req)

    def _admit_child(self, req: OrchestrationRequest) -> None:
        """A child run's limits: the tree's depth and size (refused naming the setting), and
        a deadline within its parent's."""
        parent, tree = req.parent, self.settings.tree
        assert parent is not None
        if parent.depth > tree.max_depth:
            raise TreeLimitExceeded(
                f"a child run at depth {parent.depth} (below run {parent.root_run_id}) exceeds "
                f"ORCH_TREE__MAX_DEPTH={tree.max_depth}: flatten the plan, or raise the setting",
                limit="ORCH_TREE__MAX_DEPTH",
                value=parent.depth,
                allowed=tree.max_depth,
            )
        (deadline_raw,) = self.store.run_fields(parent.run_id, ["deadline_at"])
        if self.store.has_ended(parent.run_id):
            raise InvalidRequest(f"parent run {parent.run_id} has ended: no child runs now")
        parent_deadline = float(deadline_raw or 0)
        if req.created_at + deadline_s_of(req, self.settings) > parent_deadline:
            req.deadline_s = max(parent_deadline - req.created_at, 0.001)
        n = len(req.tasks)
        if self.store.reserve_subagents(parent.root_run_id, n, tree.max_subagents) is None:
            raise TreeLimitExceeded(
                f"a child run of {n} subagents would take the tree of run "
                f"{parent.root_run_id} over ORCH_TREE__MAX_SUBAGENTS={tree.max_subagents}: "
                "fewer or wider-batched subagents, or raise the setting",
                limit="ORCH_TREE__MAX_SUBAGENTS",
                value=n,
                allowed=tree.max_subagents,
            )

    def _link_child(self, req: OrchestrationRequest) -> None:
        """Name the child on its parent's record; a parent that ended meanwhile stops it."""
        parent = req.parent
        assert parent is not None
        self.store.add_child(parent.run_id, req.run_id, parent.index)
        if self.store.has_ended(parent.run_id):
            ending.cancel(self.store, _no_revoke, req.run_id, f"parent run {parent.run_id} ended")
            raise InvalidRequest(f"parent run {parent.run_id} has ended: no child runs now")

    def _batch_async(self, req: OrchestrationRequest) -> bool:
        """A wide spawn or gather of async agents only goes ORCH_AIO__BATCH_SIZE subagents a
        message: a worker runs a message's subagents at once on its event loop, and Celery's
        cost per message (three task events, an ack, an unacked-index write) was most of a
        worker's time at a thousand one-message subagents. True if it chose a batch size."""
        size = self.settings.aio.batch_size
        if req.batch_size is not None or size <= 1 or len(req.tasks) <= size:
            return False
        if not pattern_of(req.pattern).batches or req.preflight == "auto":
            return False
        try:
            entries = [
                self.source.catalog.get(AgentKind.AGENT, a) for a in {t.agent for t in req.tasks}
            ]
        except OrchestratorError:
            return False  # unknown agents: expansion says so
        if not all(e.is_async for e in entries):
            return False
        req.batch_size = size
        return True

    def admit_unrecorded(self, req: OrchestrationRequest, wire: str) -> str | None:
        """Record a run sent without a record (a non-Python client), as the client would
        have; returns the refusal, if refused (the run is then written and ended failed)."""
        try:
            self.admit(req, checked=False, wire=wire)
            return None
        except ParallelismDoesNotPay as exc:
            refused = f"ParallelismDoesNotPay: {exc}"
        except OrchestratorError as exc:  # unknown agent, bad payload: expansion says so
            log.info("run %s: no pre-flight (%s)", req.run_id, exc)
            record = run_record(req, req.created_at + deadline_s_of(req, self.settings))
            self.store.create_run(record, request=wire)
            return None
        self.store.create_run(run_record(req, req.created_at + deadline_s_of(req, self.settings)))
        return refused
