"""Pre-flight I/O and policy: read the advisor's inputs from Redis, then warn, refuse or pick
sequential execution. The judgement itself is the pure :func:`orchestrator.advisor.advise`."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from orchestrator.advisor.advisor import Preflight, advise
from orchestrator.advisor.checks import Capacity
from orchestrator.catalog import Catalog
from workers.errors import ParallelismDoesNotPay
from workers.models import AgentKind, CatalogEntry, Execution, Pattern, Verdict
from workers.request import OrchestrationRequest
from workers.settings import Settings
from workers.stats import AGENT, MERGER, PATTERN, VALIDATOR, series
from workers.store import RunStore

log = logging.getLogger(__name__)

#: A worker whose heartbeat is older than this is not counted as capacity.
LIVE_S = 30.0


class PreflightSource:
    """Gathers the catalog entries, duration statistics and live capacity a request needs."""

    def __init__(self, store: RunStore, catalog: Catalog, settings: Settings) -> None:
        self.store = store
        self.catalog = catalog
        self.settings = settings

    def preflight(self, req: OrchestrationRequest, *, checked: bool = False) -> Preflight:
        """Judge a request (UnknownAgent / InvalidPayload when it cannot run at all).

        ``checked``: the caller already validated the request against the catalog.
        """
        return self.judge(req, checked=checked)[0]

    def unserved(self, req: OrchestrationRequest) -> list[str]:
        """The request's agents (and merger) that no live worker serves (without pre-flight)."""
        entries = [e for e in self._entries(req) if e.kind is not AgentKind.VALIDATOR]
        return self.store.unserved(entries, LIVE_S)

    def judge(
        self, req: OrchestrationRequest, *, checked: bool = False
    ) -> tuple[Preflight, list[str]]:
        """The pre-flight, and which of the request's agents (and merger) no live worker serves,
        from the same heartbeats."""
        if not checked:
            tasks = [(t.agent, t.payload) for t in req.tasks]
            self.catalog.check_request(req.pattern, tasks, req.merge, req.validate_with)
        entries = self._entries(req)
        names = [series(AGENT, a) for a in sorted({t.agent for t in req.tasks})]
        if req.merge:
            names.append(series(MERGER, req.merge))
        if req.validate_with:
            names.append(series(VALIDATOR, req.validate_with))
        names += [series(PATTERN, p.value) for p in Pattern]
        queues = sorted({e.queue for e in entries if e.kind is AgentKind.AGENT})
        # One round trip: statistics, heartbeats and, when the broker is this Redis, backlogs.
        same_redis = self.settings.broker_url == self.settings.redis_url()
        stats, workers, backlog = self.store.planning_facts(names, queues if same_redis else [])
        now = time.time()
        live = [w for w in workers if now - w.heartbeat_at < LIVE_S]
        capacity = Capacity.from_workers(live, backlog)
        unserved = [
            e.name
            for e in entries
            if e.kind is not AgentKind.VALIDATOR and not any(w.serves_entry(e) for w in live)
        ]
        return advise(req, entries, stats, capacity, self.settings.advisor), unserved

    def _entries(self, req: OrchestrationRequest) -> list[CatalogEntry]:
        entries = [
            self.catalog.get(AgentKind.AGENT, a) for a in sorted({t.agent for t in req.tasks})
        ]
        if req.merge:
            entries.append(self.catalog.get(AgentKind.MERGER, req.merge))
        if req.validate_with:
            entries.append(self.catalog.get(AgentKind.VALIDATOR, req.validate_with))
        return entries


def apply_policy(
    pf: Preflight, req: OrchestrationRequest
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Run-record fields and events for the request's policy, or ParallelismDoesNotPay.

    warn: log and record; refuse: raise when the plan does not pay; auto: run a plan that does
    not pay sequentially (a chain) and say so.
    """
    policy = req.preflight
    bad = pf.verdict is Verdict.DOES_NOT_PAY
    if policy == "refuse" and bad:
        raise ParallelismDoesNotPay(
            f"not submitted: pre-flight judged this {req.pattern.value} of {pf.n} tasks "
            f"'{pf.verdict.value}': {' | '.join(pf.reasons())}. Fix the plan, or submit with "
            "preflight='warn' (run it anyway) or 'auto' (run it sequentially)",
            preflight=pf,
            reasons=pf.reasons(),
        )
    execution = Execution.SEQUENTIAL if policy == "auto" and bad else Execution.PARALLEL
    speedup = f"x{pf.speedup:.2f}" if pf.speedup is not None else "unknown"
    if bad or pf.verdict is Verdict.MARGINAL:
        log.warning(
            "run %s: pre-flight says %s (predicted speedup %s)%s: %s",
            req.run_id,
            pf.verdict.value,
            speedup,
            "; running it sequentially" if execution is Execution.SEQUENTIAL else "",
            " | ".join(pf.reasons()),
        )
    else:
        log.info("run %s: pre-flight says %s (speedup %s)", req.run_id, pf.verdict.value, speedup)
    prediction = pf.prediction(policy, execution)
    fields: dict[str, Any] = {
        "prediction": prediction.model_dump_json(),
        "execution": execution.value,
    }
    if pf.batch_size and req.batch_size is None and execution is Execution.PARALLEL:
        # Adaptive batching: the request goes to the coordinator with the chosen size.
        req.batch_size = pf.batch_size
        fields["batching"] = str(pf.batch_size)
    event = {
        "type": "preflight",
        "verdict": pf.verdict.value,
        "speedup": speedup,
        "execution": execution.value,
        "reasons": json.dumps(pf.reasons()),
    }
    return fields, [event]
