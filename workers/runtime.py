"""The wrapper every subagent and merger runs inside: envelope, timing, validation,
cancellation and the race claim. Agents never raise into the canvas: whatever they do becomes
an envelope, recorded once per index."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from workers import ending
from workers.cancel import Running
from workers.children import Children, Origin
from workers.context import AgentContext
from workers.error_info import error_info, validation_error
from workers.errors import TaskCancelled
from workers.hedging import wait_turn
from workers.ledger import SpendDelta, SpendMeter
from workers.models import AgentKind, AgentResult, AgentStatus, ErrorInfo, RunParent, TaskMeta
from workers.patterns import pattern_of
from workers.registry import AgentSpec
from workers.services import Services
from workers.spending import budget_crossed, spend_flusher, tree_spend
from workers.stats import VALIDATOR, Sample, duration_sample
from workers.store import NO_SPEND, FinishOutcome

log = logging.getLogger(__name__)


def coerce_output(spec: AgentSpec, out: Any) -> BaseModel:
    assert spec.output is not None
    if isinstance(out, spec.output):
        # Re-validate: a model built with model_construct or mutated after creation may be wrong.
        return spec.output.model_validate(out.model_dump())
    if isinstance(out, BaseModel):
        out = out.model_dump()
    return spec.output.model_validate(out)


def call_agent(services: Services, item: Running, fn: Callable[..., Any], *args: Any) -> Any:
    services.listener.enter(item)
    result = fn(*args)
    services.listener.leave(item)
    return result


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


def make_context(
    services: Services, spec: AgentSpec, item: Running, *, task_id: str, worker: str,
    run_id: str, index: int, attempt: int, meta: TaskMeta,
) -> AgentContext:  # fmt: skip
    """The AgentContext of one subagent or merger."""
    meter = SpendMeter(services.prices, services.flush_s)

    def origin() -> Origin:
        assert services.settings is not None
        above = meta.ancestors
        parent = RunParent(
            run_id=run_id, index=index, agent=spec.name, task_id=task_id,
            root_run_id=above[0] if above else run_id, depth=len(above) + 1,
            ancestors=[*above, run_id],
        )  # fmt: skip
        lend = services.lend_slot if spec.is_async else None
        return Origin(parent, meta.deadline_at, spec.is_async, worker, services.settings, lend)

    ctx = AgentContext(
        children=Children(origin) if services.settings is not None else None,
        meter=meter,
        flush=spend_flusher(services, run_id, meta, meter),
        run_id=run_id,
        task_id=task_id,
        index=index,
        agent=spec.name,
        pattern=meta.pattern,
        attempt=attempt,
        deadline_at=meta.deadline_at,
        worker=worker,
        running=item,
        store=services.store,
        aio=services.aio if spec.is_async else None,
        limiter=services.limiter(),
    )
    ctx.model, ctx.rate_limit, ctx.retry_policy = spec.model, spec.rate_limit, spec.retry
    return ctx


def new_envelope(
    spec: AgentSpec, *, task_id: str, worker: str, index: int, meta: TaskMeta
) -> AgentResult:
    """The envelope of a subagent about to start."""
    return AgentResult(
        index=index,
        task_id=task_id,
        agent=spec.name,
        status=AgentStatus.OK,
        queued_at=meta.queued_at,
        worker=worker,
    )


def must_not_run(
    services: Services, env: AgentResult, reason: str, started: float, meta: TaskMeta
) -> bool:
    """Whether start.lua's answer (or the deadline, or the attempts) keeps the agent from
    running: cheap, no I/O, so the async path only leaves its loop when it must."""
    return (
        bool(reason)
        or ending.overdue(meta.deadline_at, started)
        or (env.attempt > services.max_attempts)
    )


def not_run(
    services: Services, env: AgentResult, reason: str, *, run_id: str, started: float,
    meta: TaskMeta,
) -> AgentResult:  # fmt: skip
    """The envelope of a subagent that does not run (see must_not_run), recorded."""
    store = services.store
    if reason == "unknown-run":
        env.status = AgentStatus.ERROR
        env.error = ErrorInfo(
            type="RunNotFound",
            message=f"run {run_id} has no record (expired, or submitted under another prefix)",
            hint="check ORCH_KEY_PREFIX and ORCH_STATE_URL are the same for clients and workers",
        )
        return env
    if reason == "reported":
        pattern_of(meta.pattern).on_reported_again(services.completion(run_id))
        previous = store.envelope(run_id, env.index)
        return previous if previous is not None else env
    if not reason and ending.overdue(meta.deadline_at, started):
        reason = "deadline passed while queued"
    if not reason:
        _give_up(services, env, run_id, meta)
        return env
    env.status = AgentStatus.SKIPPED
    env.error = ErrorInfo(type="Skipped", message=reason)
    env.finished_at = time.time()
    store.finish_task(run_id, env, claim=False)
    return env


def execute_agent(
    services: Services,
    spec: AgentSpec,
    *,
    task_id: str,
    worker: str,
    run_id: str,
    index: int,
    payload: Any,
    meta: TaskMeta,
) -> AgentResult:
    """Run one subagent and return its envelope (recorded in Redis once)."""
    wait_turn(services, run_id, index, task_id, meta)  # a hedged racer's turn
    env = new_envelope(spec, task_id=task_id, worker=worker, index=index, meta=meta)
    started = time.time()
    env.attempt, reason = services.store.start_task(run_id, index, worker)
    if must_not_run(services, env, reason, started, meta):
        return not_run(services, env, reason, run_id=run_id, started=started, meta=meta)
    env.started_at = started
    with services.listener.track(run_id, index, task_id) as item:
        ctx = make_context(
            services, spec, item, task_id=task_id, worker=worker, run_id=run_id, index=index,
            attempt=env.attempt, meta=meta,
        )  # fmt: skip
        inp = parse_input(spec, env, payload)
        if inp is not None:
            try:
                trap_output(spec, env, call_agent(services, item, spec.fn, inp, ctx))
            except TaskCancelled as exc:
                cancelled(env, exc)
            except Exception as exc:  # a ValidationError raised inside the agent is its error
                failed(env, exc)
        env.cancel_requested_at = item.cancel_at
    ctx.close_children()
    env.usage = ctx.meter.usage
    env.throttled_s, env.retries = ctx.throttled_s, ctx.retries
    timings = _check_candidate(services, env, meta)
    env.finished_at = time.time()
    _record(services, env, run_id, meta, timings, ctx.meter.take())
    return env


def parse_input(spec: AgentSpec, env: AgentResult, payload: Any) -> BaseModel | None:
    """The agent's input model, or None with an error envelope."""
    try:
        return spec.input.model_validate(payload)
    except ValidationError as exc:
        env.status = AgentStatus.ERROR
        env.error = validation_error(
            "InvalidPayload", exc, f"send a payload matching agent {spec.name!r}'s input model"
        )
        return None


def cancelled(env: AgentResult, exc: BaseException) -> None:
    """The agent was stopped (race lost, run cancelled, deadline)."""
    env.status = AgentStatus.CANCELLED
    env.error = ErrorInfo(type="Cancelled", message=str(exc) or "cancelled")


def failed(env: AgentResult, exc: BaseException) -> None:
    """The agent raised."""
    env.status = AgentStatus.ERROR
    env.error = error_info(exc)


def trap_output(spec: AgentSpec, env: AgentResult, out: Any) -> None:
    """The error trap: an output its model rejects, or one that is not JSON, is INVALID."""
    try:
        env.output = coerce_output(spec, out).model_dump(mode="json")
    except ValidationError as exc:
        env.status = AgentStatus.INVALID
        env.error = validation_error(
            "InvalidOutput", exc, f"agent {spec.name!r} returned data its output model rejects"
        )
    except Exception as exc:  # valid but not JSON (bytes, an object in an Any field, NaN, ...)
        env.status = AgentStatus.INVALID
        env.error = ErrorInfo(
            type="InvalidOutput",
            message=f"the output cannot be sent as JSON: {type(exc).__name__}"[:2000],
            hint=f"agent {spec.name!r} must return JSON-compatible data (str, numbers, lists, "
            "dicts, or pydantic models of those)",
        )


def _give_up(services: Services, env: AgentResult, run_id: str, meta: TaskMeta) -> None:
    """Started more often than ORCH_MAX_ATTEMPTS: every earlier delivery died with its process
    (the agent killed it, ran out of memory, or its machine keeps dying). Record an error
    envelope instead of running it again, so the run ends instead of redelivering forever."""
    env.status = AgentStatus.ERROR
    env.error = ErrorInfo(
        type="WorkerLost",
        message=f"a worker process died while running it, {env.attempt - 1} times; not run again",
        hint="the agent may kill its own process (os._exit, a crash in C code, running out of "
        "memory); ORCH_MAX_ATTEMPTS sets how often a subtask is delivered",
    )
    env.finished_at = time.time()
    _record(services, env, run_id, meta)


def wants_check(env: AgentResult, meta: TaskMeta) -> bool:
    """Whether a race's validator must judge this output before it may claim the win."""
    return (
        env.status is AgentStatus.OK
        and bool(meta.validate_with)
        and pattern_of(meta.pattern).claims_win
    )


def _check_candidate(services: Services, env: AgentResult, meta: TaskMeta) -> list[Sample]:
    """A would-be winner's validator; its time is recorded with the envelope (pre-flight warns
    about slow validators)."""
    if not wants_check(env, meta):
        return []
    name = meta.validate_with or ""
    checked = time.perf_counter()
    check = validator_of(services, env, name)
    if check is not None:
        try:
            raw = check.fn(check.input.model_validate(env.output))
            if inspect.isawaitable(raw):  # an async validator judging a sync agent
                raw = services.agent_loop().run(_awaited(raw))
            # bool() inside the try: a verdict that cannot be read as True/False is the
            # validator's error too.
            judge(env, name, bool(raw))
        except Exception as exc:
            judge(env, name, exc)
    return [duration_sample(VALIDATOR, name, time.perf_counter() - checked)]


def validator_of(services: Services, env: AgentResult, name: str) -> AgentSpec | None:
    """The validator, or None with the envelope made INVALID (it is not registered here)."""
    check = services.registry.get(AgentKind.VALIDATOR, name)
    if check is None:
        env.status = AgentStatus.INVALID
        env.error = ErrorInfo(
            type="UnknownValidator",
            message=f"validator {name!r} is not registered in this worker",
            hint="load the module that defines it via ORCH_AGENT_MODULES on every worker",
        )
    return check


def judge(env: AgentResult, name: str, verdict: bool | Exception) -> None:
    """Apply a validator's verdict (or the exception it raised) to the envelope."""
    if isinstance(verdict, Exception):
        env.status = AgentStatus.INVALID
        env.error = error_info(
            verdict, hint=f"validator {name!r} raised; it should return True/False"
        )
    elif not verdict:
        env.status = AgentStatus.INVALID
        env.error = ErrorInfo(type="Rejected", message=f"validator {name!r} rejected the output")


def _record(
    services: Services,
    env: AgentResult,
    run_id: str,
    meta: TaskMeta,
    timings: Sequence[Sample] = (),
    spend: SpendDelta = NO_SPEND,
) -> None:
    """Record the envelope; the win, or the last report, ends the run (the pattern says how)."""
    pattern = pattern_of(meta.pattern)
    claim = pattern.claims_win and env.status is AgentStatus.OK
    outcome = services.store.finish_task(run_id, env, claim=claim, stats=timings, spend=spend)
    if meta.ancestors and spend:
        tree_spend(services, meta, spend)
    after_record(services, env, run_id, meta, outcome)


def after_record(
    services: Services, env: AgentResult, run_id: str, meta: TaskMeta, outcome: FinishOutcome
) -> None:
    """What recording an envelope decided: a win ends the run (a valid winner stands, budget
    or not), a crossed budget stops it, an early quorum merges it, the last report ends it as
    its pattern says."""
    if outcome.won:
        ending.win(services.store, services.revoke, run_id, env, meta.n)
        return
    if outcome.crossed:
        budget_crossed(services, run_id, meta)
    elif outcome.quorum:
        pattern_of(meta.pattern).on_quorum(services.completion(run_id), outcome.n)
        return  # the merger is sent: the last report must not send it again
    if outcome.new and outcome.done >= outcome.n:
        pattern_of(meta.pattern).on_all_reported(services.completion(run_id))
