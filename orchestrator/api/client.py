"""The application-side API: ``Orchestrator().spawn / gather / race`` and run handles."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any, Unpack

from celery import Celery
from kombu.exceptions import OperationalError

from orchestrator.advisor import Preflight, PreflightSource
from orchestrator.api import aio
from orchestrator.api.options import GatherOptions, RaceOptions, SpawnOptions
from orchestrator.api.payload_depth import check_depth
from orchestrator.api.runs import Run
from orchestrator.catalog import Catalog
from orchestrator.request import OrchestrationRequest, PreflightPolicy, Task
from orchestrator.service import Admission, Coordinator, check_limits
from orchestrator.service.sweeper import sweep_stale_s
from workers import ending
from workers.app import create_app, load_agent_modules
from workers.errors import BrokerUnavailable, InvalidRequest
from workers.models import AgentKind, CatalogEntry, Pattern, WorkerInfo
from workers.names import COORDINATOR_TASK, catalog_field, coordinator_id
from workers.registry import REGISTRY
from workers.request import HedgePercentile
from workers.routing import ROUTER, RouteRequest
from workers.settings import Settings, safe_url
from workers.store import ERRORS, RunStore, make_store

log = logging.getLogger(__name__)
#: A client reports a down Redis within about a second instead of waiting it out.
CLIENT_RETRIES = 3


@contextlib.contextmanager
def _reachable(what: str, url: str) -> Iterator[None]:
    try:
        yield
    except (*ERRORS, OperationalError) as exc:
        raise BrokerUnavailable(
            f"cannot reach the {what} at {safe_url(url)}: {exc}. Is it running? Check "
            "ORCH_BROKER_URL / ORCH_STATE_URL, or start the embedded stack with `orchestrator up`",
            url=safe_url(url),
        ) from exc


def _defined_in(fn: Any, module: str) -> bool:
    name = str(getattr(fn, "__module__", ""))
    return name == module or name.startswith(module + ".")


def _is_redis(url: str) -> bool:
    return url.split("://", 1)[0].lower() in {"redis", "rediss", "unix"}


class Orchestrator:
    """Submit orchestrations and follow them.

    ``Orchestrator()`` reads ``ORCH_*`` settings from the environment; pass ``settings`` or
    ``broker_url`` (and optionally ``state_url``) to configure it explicitly.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        broker_url: str | None = None,
        state_url: str | None = None,
        key_prefix: str | None = None,
    ) -> None:
        overrides: dict[str, Any] = {}
        if broker_url is not None:
            overrides["broker_url"] = broker_url
        if state_url is not None:
            overrides["state_url"] = state_url
        if key_prefix is not None:
            overrides["key_prefix"] = key_prefix
        base = settings or Settings()
        self.settings = base.model_copy(update=overrides) if overrides else base
        self.settings.require_broker()
        self._app: Celery | None = None
        self._local: Coordinator | None = None
        self.store: RunStore = make_store(
            self.settings, retries=CLIENT_RETRIES, timeout_s=self.settings.client_timeout_s
        )
        self.catalog = Catalog(self.store, self.settings.catalog_stale_s)
        self.preflight_source = PreflightSource(self.store, self.catalog, self.settings)
        self.admission = Admission(self.store, self.catalog, self.settings)

    @property
    def app(self) -> Celery:
        """The Celery app used to send messages (no agents registered here)."""
        if self._app is None:
            app = create_app(self.settings, load_agents=False)
            if _is_redis(self.settings.require_broker()):
                # A frozen broker must not hold a send forever (kombu has no timeout by default).
                timeout_s = self.settings.client_timeout_s
                app.conf.broker_transport_options = {
                    **(app.conf.broker_transport_options or {}),
                    "socket_timeout": timeout_s,
                    "socket_connect_timeout": timeout_s,
                }
            self._app = app
        return self._app

    def close(self) -> None:
        """Release connections."""
        if self._app is not None:
            self._app.close()
        self.store.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the three patterns (and their asyncio twins: nothing blocks the loop) -------------
    def spawn(self, tasks: Sequence[Task], **options: Unpack[SpawnOptions]) -> Run:
        """parallel-spawn: run every task independently and collect every output.

        Options: ``deadline_s``, ``preflight`` (warn | refuse | auto | off), ``run_id``,
        ``batch_size`` (subagents per Celery message, for tiny subagents), ``max_tokens`` and
        ``max_cost_usd`` (a budget: crossing it stops the run, ``budget_exceeded``).
        """
        return self.submit(self.request(Pattern.SPAWN, tasks, **options))

    def gather(self, tasks: Sequence[Task], *, merge: str, **options: Unpack[GatherOptions]) -> Run:
        """gather-then-merge: run every task, then merge the valid outputs (``quorum`` of them,
        default all); options as for ``spawn`` plus ``quorum`` and ``early`` (merge as soon as
        ``quorum`` valid outputs arrived and stop the rest)."""
        return self.submit(self.request(Pattern.GATHER, tasks, merge=merge, **options))

    def race(self, tasks: Sequence[Task], **options: Unpack[RaceOptions]) -> Run:
        """race-then-cancel: the first valid result (``validate``: a validator's name) wins; the
        other racers are stopped. Options: ``validate``, ``deadline_s``, ``preflight``,
        ``run_id``; ``hedge_after_s=0.2`` starts racer i only ``i * 0.2`` s after the run, and
        only if no valid result arrived by then (else it is skipped, never run);
        ``hedge="p95"`` takes the delay from the agents' measured run times instead."""
        return self.submit(self.request(Pattern.RACE, tasks, **options))

    def route(self, task: Task, *, via: str, **options: Unpack[SpawnOptions]) -> Run:
        """Routing: the classifier agent ``via`` reads ``task.payload`` and returns
        ``Route(agent=..., payload=...)`` (``from workers import Route``); then that specialist
        runs (on the route's payload, or the task's when the route gives none). The run's one
        output is ``Routed``: the specialist's name and ``output``, and the two child runs,
        whose costs ``run.tree()`` shows side by side. ``task.agent`` is kept as what was
        asked. A route naming an agent no worker serves fails the run with UnknownAgent."""
        with _reachable("state Redis", self.settings.redis_url()):
            self.catalog.get(AgentKind.AGENT, via)  # an unknown classifier fails here, now
        ask = RouteRequest(via=via, asked=task.agent, payload=task.payload, secret=task.secret)
        options.setdefault("preflight", "off")  # one router: nothing to parallelise
        return self.spawn([Task(ROUTER, ask, secret=task.secret)], **options)

    async def spawn_async(self, tasks: Sequence[Task], **options: Unpack[SpawnOptions]) -> Run:
        """``spawn`` for asyncio; ``await run.wait_async()`` for its result."""
        return await self.submit_async(self.request(Pattern.SPAWN, tasks, **options))

    async def gather_async(
        self, tasks: Sequence[Task], *, merge: str, **options: Unpack[GatherOptions]
    ) -> Run:
        """``gather`` for asyncio; ``await run.wait_async()`` for its result."""
        req = self.request(Pattern.GATHER, tasks, merge=merge, **options)
        return await self.submit_async(req)

    async def race_async(self, tasks: Sequence[Task], **options: Unpack[RaceOptions]) -> Run:
        """``race`` for asyncio; ``await run.wait_async()`` for its result."""
        return await self.submit_async(self.request(Pattern.RACE, tasks, **options))

    async def submit_async(self, req: OrchestrationRequest) -> Run:
        """``submit`` for asyncio: the catalog check, the run record and the send run in the
        loop's default executor; the request was already validated by the caller."""
        # Build the Celery app and its producer pool here, once: their lazy creation is not
        # thread-safe, and many submits may run in executor threads at the same time.
        self.app.amqp.producer_pool  # noqa: B018
        return await aio.in_thread(self.submit, req)

    # -- building blocks ------------------------------------------------------------------
    def request(
        self,
        pattern: Pattern,
        tasks: Sequence[Task],
        *,
        merge: str | None = None,
        quorum: int | None = None,
        validate: str | None = None,
        deadline_s: float | None = None,
        preflight: PreflightPolicy = "warn",
        run_id: str | None = None,
        batch_size: int | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
        early: bool = False,
        hedge_after_s: float | None = None,
        hedge: HedgePercentile | None = None,
    ) -> OrchestrationRequest:
        """Build and check a request (InvalidRequest on a malformed one)."""
        if isinstance(tasks, Task):
            raise InvalidRequest("pass a list of Task, not a single Task")
        bad = [t for t in tasks if not isinstance(t, Task)]
        if bad:
            raise InvalidRequest(f"tasks must be Task objects; got {type(bad[0]).__name__}")
        fields: dict[str, Any] = {
            "pattern": pattern,
            "tasks": [t.spec() for t in tasks],
            "merge": merge,
            "quorum": quorum,
            "validate": validate,
            "deadline_s": deadline_s,
            "preflight": preflight,
            "batch_size": batch_size,
            "max_tokens": max_tokens,
            "max_cost_usd": max_cost_usd,
            "early": early,
            "hedge_after_s": hedge_after_s,
            "hedge": hedge,
        }
        if run_id is not None:
            fields["run_id"] = run_id
        try:
            return OrchestrationRequest.model_validate(fields)
        except ValueError as exc:
            raise InvalidRequest(f"invalid {pattern.value} request: {exc}") from exc

    def submit(self, req: OrchestrationRequest) -> Run:
        """Validate against the catalog, record the run and hand it to the coordinator.

        A run of at most ``ORCH_CLIENT_EXPAND_MAX_N`` subagents is expanded here instead (same
        code, no hop). On any error nothing is enqueued.
        """
        check_depth(req)
        wire = req.model_dump_json(by_alias=True)
        check_limits(req, self.settings, len(wire))
        with _reachable("state Redis", self.settings.redis_url()):
            self.catalog.check_request(
                req.pattern,
                [(t.agent, t.payload) for t in req.tasks],
                req.merge,
                req.validate_with,
            )
            req.payloads_checked = True
            if self.store.run_exists(req.run_id):
                raise InvalidRequest(f"run id {req.run_id!r} is already in use")
            # Refuse raises ParallelismDoesNotPay here, before anything is written or sent.
            self.admission.admit(req, checked=True, wire=wire)
        try:
            with _reachable("broker", self.settings.require_broker()):
                self._send(req)
        except BrokerUnavailable as exc:
            with contextlib.suppress(Exception):
                ending.fail(self.store, req.run_id, f"not enqueued: {exc}")
            raise
        return Run(self, req.run_id)

    def _send(self, req: OrchestrationRequest) -> None:
        """Hand the request to a coordinator, or expand a narrow run here (latency first)."""
        wire = req.model_dump(mode="json", by_alias=True)
        if len(req.tasks) <= self.settings.client_expand_max_n:
            self._coordinator().run(wire)
            return
        lineage = {}
        if req.parent is not None:
            # Flower draws the tree: a child run's coordinator task is a child of the subagent
            # that started it, and its root the top run's coordinator.
            lineage = {
                "parent_id": req.parent.task_id,
                "root_id": coordinator_id(req.parent.root_run_id),
            }
        self.app.send_task(
            COORDINATOR_TASK,
            args=[wire],
            **lineage,
            queue=self.settings.coordinator_queue,
            task_id=coordinator_id(req.run_id),
            argsrepr=f"run={req.run_id} pattern={req.pattern.value} width={len(req.tasks)}",
            kwargsrepr="",
            retry=True,
            retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5},
        )

    def _coordinator(self) -> Coordinator:
        if self._local is None:
            self._local = Coordinator(
                self.app,
                self.settings,
                store=self.store,
                catalog=self.catalog,
                raise_send_errors=True,
            )
        return self._local

    def preflight(
        self,
        pattern: Pattern | str,
        tasks: Sequence[Task],
        *,
        merge: str | None = None,
        quorum: int | None = None,
        validate: str | None = None,
        max_tokens: int | None = None,
        max_cost_usd: float | None = None,
    ) -> Preflight:
        """Should this plan run in parallel? A verdict, predicted times, tokens and dollars, and
        one line per check (a budget smaller than the prediction fails).

        Nothing is submitted. Predictions use the statistics of past runs and the live worker
        capacity; with no history for an agent the verdict is 'unknown'.
        """
        try:
            kind = Pattern(pattern)
        except ValueError as exc:
            known = ", ".join(p.value for p in Pattern)
            raise InvalidRequest(f"unknown pattern {pattern!r}; use one of {known}") from exc
        req = self.request(
            kind, tasks, merge=merge, quorum=quorum, validate=validate,
            max_tokens=max_tokens, max_cost_usd=max_cost_usd,
        )  # fmt: skip
        return self.preflight_request(req)

    def preflight_request(self, req: OrchestrationRequest) -> Preflight:
        """:meth:`preflight` for a complete request (e.g. read from JSON)."""
        check_depth(req)
        with _reachable("state Redis", self.settings.redis_url()):
            return self.preflight_source.preflight(req)

    def get_run(self, run_id: str) -> Run:
        """A handle on a run submitted anywhere (RunNotFound if unknown or expired)."""
        with _reachable("state Redis", self.settings.redis_url()):
            self.store.run_fields(run_id, ["run_id"])
        return Run(self, run_id)

    def revoke(self, task_ids: list[str]) -> None:
        """Best-effort Celery revoke (queued tasks show REVOKED in Flower)."""
        try:
            self.app.control.revoke(task_ids)
        except Exception as exc:
            log.warning("revoke failed: %s (cancel flags still hold)", exc)

    def agents(self) -> list[CatalogEntry]:
        """The catalog published by the workers."""
        with _reachable("state Redis", self.settings.redis_url()):
            return self.catalog.entries()

    def recent_runs(self, limit: int = 20) -> list[str]:
        """Most recent run ids first."""
        with _reachable("state Redis", self.settings.redis_url()):
            return self.store.recent_runs(limit)

    def live_processes(self, max_age_s: float = 30.0) -> list[WorkerInfo]:
        """Workers and coordinators whose heartbeat is fresh."""
        with _reachable("state Redis", self.settings.redis_url()):
            return self.store.live_processes(max_age_s)

    def catalog_gaps(self, agent_modules: Sequence[str] | None = None) -> list[str]:
        """The catalog fields (``agent:<name>``, ...) that the agents, mergers and validators
        of ``agent_modules`` (default ORCH_AGENT_MODULES, imported here) register but the
        catalog lacks: a worker running them cannot be used until it publishes them again."""
        modules = list(self.settings.agent_modules if agent_modules is None else agent_modules)
        load_agent_modules(modules)
        expected = {
            catalog_field(spec.kind.value, spec.name)
            for spec in REGISTRY.all()
            if any(_defined_in(spec.fn, m) for m in modules)
        }
        with _reachable("state Redis", self.settings.redis_url()):
            return sorted(expected - self.store.catalog_fields()) if expected else []

    def stalled_sweepers(self, hostnames: Sequence[str]) -> list[str]:
        """The coordinators among ``hostnames`` whose sweeper has not completed a round within
        ``sweep_stale_s`` (frozen, stuck, or failing every round)."""
        stale_s = sweep_stale_s(self.settings.heartbeat_s)
        now = time.time()
        with _reachable("state Redis", self.settings.redis_url()):
            swept = self.store.swept_at(hostnames)
        return [h for h, at in swept.items() if at is None or now - at > stale_s]

    def ping(self, timeout_s: float = 2.0) -> float:
        """Round trip to the state Redis in ms (BrokerUnavailable when down)."""
        start = time.perf_counter()
        with _reachable("state Redis", self.settings.redis_url()):
            self.store.ping()
        return (time.perf_counter() - start) * 1000
