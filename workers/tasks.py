"""The Celery tasks of a worker: one per agent (and its batch twin) and one per merger, each a
thin shell over :mod:`workers.runtime`, and the per-process services they share."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

from celery import Celery, Task
from celery.canvas import Signature
from celery.exceptions import Ignore

from workers.agent_loop import AgentLoop
from workers.async_tasks import AsyncTasks, MessageTask
from workers.cancel import CancelListener
from workers.errors import SubagentFailed
from workers.merging import execute_merge
from workers.models import AgentKind, AgentResult, AgentStatus, TaskMeta
from workers.names import batch_task_name, subtask_id
from workers.patterns import send_merger_message
from workers.prices import parse_prices
from workers.ratelimit import parse_rate_limits
from workers.registry import AgentSpec, Registry
from workers.runtime import execute_agent
from workers.runtime_async import execute_agent_async, execute_merge_async
from workers.services import Services
from workers.settings import Settings
from workers.store import CONNECTION_ERRORS, make_store

log = logging.getLogger(__name__)

#: Envelope statuses whose Celery task Flower shows FAILURE, and REVOKED; the rest SUCCESS.
FAILED = frozenset({AgentStatus.ERROR, AgentStatus.INVALID, AgentStatus.LOST})
STOPPED = frozenset({AgentStatus.CANCELLED, AgentStatus.SKIPPED})
#: An expected outcome, logged by Celery as one INFO line without a traceback.
THROWS = (SubagentFailed,)


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
                listener = CancelListener(store, poll_s=self.settings.cancel.poll_s)
                listener.start()
                self._services = Services(
                    store=store,
                    listener=listener,
                    registry=self.registry,
                    revoke=self._revoke,
                    send=self._send,
                    max_attempts=self.settings.max_attempts,
                    state_retries=self.settings.state_retries,
                    loop=AgentLoop(self.settings.aio),
                    state_url=self.settings.redis_url(),
                    prices=parse_prices(self.settings.prices),
                    rate_limits=parse_rate_limits(self.settings.rate_limits),
                    flush_s=self.settings.ledger.flush_s,
                    max_in_flight=self.settings.aio.max_in_flight,
                    settings=self.settings,
                    widen=self._widen,
                )
            return self._services

    def _widen(self, delta: int) -> None:
        widen = getattr(self.app, "orch_widen", None)  # set by the AsyncQueues bootstep
        if widen is not None:
            widen(delta)

    def _send(self, message: str) -> None:
        send_merger_message(self.app, message)

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
    if spec.is_async:
        _register_async_agent(app, spec, services, queue)
        return

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
        return _outcome(self, run_id, [env])[0]

    app.task(name=spec.task_name, throws=THROWS, **_agent_task_options(queue))(run_agent)

    def run_batch(self: Any, run_id: str, items: list[Any], meta: dict[str, Any]) -> Any:
        svc = services.get()
        calls = _batch_items(self, run_id, items, meta)
        return _outcome(self, run_id, [execute_agent(svc, spec, **kw) for kw in calls])

    app.task(name=batch_task_name(spec.name), throws=THROWS, **_agent_task_options(queue))(
        run_batch
    )


def _register_async_agent(
    app: Celery, spec: AgentSpec, services: _ProcessServices, queue: str
) -> None:
    """An async agent: its messages run on the process's event loop (workers/async_tasks.py);
    the Celery task bodies are for Celery's own pools, where each waits in its slot."""

    async def run_agent(
        task: Any, run_id: str, index: int, payload: Any, meta: dict[str, Any]
    ) -> Any:
        env = await execute_agent_async(
            services.get(),
            spec,
            task_id=task.request.id,
            worker=task.request.hostname or socket.gethostname(),
            run_id=run_id,
            index=index,
            payload=payload,
            meta=TaskMeta.model_validate(meta),
        )
        return _outcome(task, run_id, [env])[0]

    async def run_batch(task: Any, run_id: str, items: list[Any], meta: dict[str, Any]) -> Any:
        svc = services.get()
        calls = _batch_items(task, run_id, items, meta)
        envs = await asyncio.gather(*(execute_agent_async(svc, spec, **kw) for kw in calls))
        return _outcome(task, run_id, list(envs))

    _add_async(app, services, spec.task_name or "", run_agent, _agent_task_options(queue))
    _add_async(app, services, batch_task_name(spec.name), run_batch, _agent_task_options(queue))


def _add_async(
    app: Celery,
    services: _ProcessServices,
    name: str,
    body: Callable[..., Coroutine[Any, Any, Any]],
    options: dict[str, Any],
) -> None:
    """Register an async body: as the handler our pools run on the loop, and as a Celery task
    that runs it on the loop from a slot of Celery's own pools."""
    app.orch_async.add(name, lambda task, args, kwargs: body(task, *args, **kwargs))

    def in_a_slot(self: Any, *args: Any, **kwargs: Any) -> Any:
        # The request is thread-local: take it here, the body runs on the loop's thread.
        task = MessageTask(self, self.request)
        return services.get().agent_loop().run(body(task, *args, **kwargs))

    app.task(name=name, throws=THROWS, **options)(in_a_slot)


def _batch_items(
    task: Any, run_id: str, items: list[Any], meta: dict[str, Any]
) -> list[dict[str, Any]]:
    """The keyword arguments of execute_agent (or its async twin) for each item of a batch
    message: one envelope each, under the item's own subtask id."""
    task_meta = TaskMeta.model_validate(meta)
    worker = task.request.hostname or socket.gethostname()
    return [
        {
            "task_id": subtask_id(run_id, int(index)),
            "worker": worker,
            "run_id": run_id,
            "index": int(index),
            "payload": payload,
            "meta": task_meta,
        }
        for index, payload in items
    ]


class _KeepsReprs(Task):  # type: ignore[misc]
    """An agent task whose retries keep the message's ``argsrepr``/``kwargsrepr``.

    Celery's ``retry`` (and so ``autoretry_for``) sends a new message built from the request,
    which keeps the arguments but not their repr: the new message would show the full payload
    (a ``Task(..., secret=True)`` one too) in Flower, in events and in the worker's log lines.
    """

    def signature_from_request(
        self,
        request: Any = None,
        args: Any = None,
        kwargs: Any = None,
        queue: str | None = None,
        **extra_options: Any,
    ) -> Signature:
        request = self.request if request is None else request
        for name in ("argsrepr", "kwargsrepr"):
            value = getattr(request, name, None)
            if value is not None:
                extra_options.setdefault(name, value)
        sig: Signature = super().signature_from_request(
            request, args, kwargs, queue, **extra_options
        )
        return sig


def _agent_task_options(queue: str) -> dict[str, Any]:
    return {
        "base": _KeepsReprs,
        "bind": True,
        "queue": queue,
        "typing": False,
        # start.lua records the start; Celery's STARTED write would cost two more round trips.
        "track_started": False,
        # State Redis away for longer than the client's own retries: try the message again
        # later rather than lose it (envelopes are recorded once per index, so it is safe).
        "autoretry_for": CONNECTION_ERRORS,
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


def _outcome(task: Any, run_id: str, envs: list[AgentResult]) -> list[dict[str, Any]]:
    """The Celery results of recorded envelopes, or the Celery outcome that tells Flower the
    truth: FAILURE when any failed (a batch: any of its items), REVOKED when every one was
    stopped or skipped.

    The envelopes are recorded already, so what is raised here changes nothing of the run; the
    message is acknowledged either way (acks late, acknowledged on failure). A failure raises
    SubagentFailed: Celery sends task-failed with the error's type and message (never the
    payload) and logs one INFO line (``throws``). Celery has no outcome for "revoked by the task
    itself", so a stop sends task-revoked from here and raises Ignore: Celery then sends no event
    and logs one INFO line. Each way the task costs one event, as a success does.
    """
    failed = [e for e in envs if e.status in FAILED]
    if failed:
        _continue_chain(task)
        reasons = "; ".join(_reason(e) for e in failed)
        raise SubagentFailed(reasons[:2000], run_id=run_id, indices=[e.index for e in failed])
    if envs and all(e.status in STOPPED for e in envs):
        try:
            task.send_event("task-revoked", terminated=False, signum=None, expired=False)
        except Exception as exc:  # monitoring only: the outcome is recorded
            log.warning("task-revoked event for %s not sent: %s", task.request.id, exc)
        _continue_chain(task)
        raise Ignore()
    return [_summary(run_id, env) for env in envs]


def _reason(env: AgentResult) -> str:
    error = env.error
    why = f"{error.type}: {error.message}" if error else "no error recorded"
    hint = f" (hint: {error.hint})" if error and error.hint else ""
    return f"#{env.index} {env.agent} {env.status.value}: {why}{hint}"


def _continue_chain(task: Any) -> None:
    """Send the next link of a sequential run (a Celery chain: preflight='auto'), which Celery
    sends only after a success: a failed or stopped link must not stop the links after it."""
    req = task.request
    links = req.chain
    if links:
        task.app.signature(links[-1]).apply_async(
            chain=links[:-1], parent_id=req.id, root_id=req.root_id or req.id
        )


def _register_merger(app: Celery, spec: AgentSpec, services: _ProcessServices, queue: str) -> None:
    if spec.is_async:

        async def merge_async(
            task: Any, _members: Any, run_id: str, meta: dict[str, Any], quorum: int
        ) -> dict[str, Any]:
            return await execute_merge_async(
                services.get(),
                spec,
                task_id=task.request.id,
                worker=task.request.hostname or socket.gethostname(),
                run_id=run_id,
                meta=TaskMeta.model_validate(meta),
                quorum=quorum,
            )

        options = {"bind": True, "queue": queue, "typing": False}
        _add_async(app, services, spec.task_name or "", merge_async, options)
        return

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


def register_agents(app: Celery, settings: Settings, registry: Registry) -> None:
    """Register a task for every agent and merger of the registry on the app."""
    services = _ProcessServices(app, settings, registry)
    app.orch_async = AsyncTasks(app, lambda: services.get().agent_loop())
    for spec in registry.of_kind(AgentKind.AGENT):
        _register_agent(app, spec, services, spec.queue_in(settings.agent_queue))
    for spec in registry.of_kind(AgentKind.MERGER):
        _register_merger(app, spec, services, spec.queue_in(settings.agent_queue))
