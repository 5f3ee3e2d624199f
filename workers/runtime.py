"""The wrapper every subagent and merger runs inside: envelope, timing, validation,
cancellation and the race claim. Agents never raise into the canvas: whatever they do becomes
an envelope, recorded once per index."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from pydantic_core.core_schema import ErrorType

from workers import ending
from workers.cancel import CancelListener, Running
from workers.context import AgentContext
from workers.errors import TaskCancelled
from workers.models import AgentKind, AgentResult, AgentStatus, ErrorInfo, RunStatus, TaskMeta
from workers.patterns import Completion, pattern_of
from workers.registry import AgentSpec, Registry
from workers.run_result import failure_reasons
from workers.stats import MERGER, VALIDATOR, Sample, duration_sample
from workers.store import RunStore

log = logging.getLogger(__name__)


@dataclass
class Services:
    """What the runtime needs in each worker process."""

    store: RunStore
    listener: CancelListener
    registry: Registry
    revoke: ending.Revoke
    #: Sends a message the coordinator stored on the run record (a gather's merger).
    send: Callable[[str], None]
    #: Starts of one subtask after which it is given up (ORCH_MAX_ATTEMPTS).
    max_attempts: int = 3

    def completion(self, run_id: str) -> Completion:
        """What a pattern's completion rule gets."""
        return Completion(store=self.store, run_id=run_id, send=self.send)


def _error(exc: BaseException, hint: str | None = None) -> ErrorInfo:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    if isinstance(exc, ValidationError):
        # str() of a ValidationError quotes the input (input_value=...), which may be secret.
        inner = _validation_error(type(exc).__name__, exc, hint or "")
        return ErrorInfo(type=inner.type, message=f"{inner.message}{where}"[:2000], hint=hint)
    return ErrorInfo(type=type(exc).__name__, message=f"{exc}{where}"[:2000], hint=hint)


def _validation_error(what: str, exc: ValidationError, hint: str) -> ErrorInfo:
    """Which field failed which rule, never the value: payloads may be secret, and this text
    reaches the envelope, the run's error, the logs and Flower."""
    problems = "; ".join(
        f"field {'.'.join(str(p) for p in e['loc']) or '<root>'!r}: {_problem(e)}"
        for e in exc.errors(include_url=False, include_input=False)[:10]
    )
    return ErrorInfo(type=what, message=problems[:2000], hint=hint)


#: pydantic's own error types; any other is a PydanticCustomError whose text is the model's.
_BUILTIN_ERRORS = frozenset(get_args(ErrorType))
#: Context entries of pydantic's messages that can carry part of the input (a parser's error
#: text, a union's tag); the others (bounds, patterns, expected values) come from the model.
_INPUT_CONTEXT = frozenset({"error", "encoding_error", "tag", "tz_actual", "attribute"})


def _problem(e: ErrorDetails) -> str:
    """pydantic's message when it cannot quote the input, else the part before the quote."""
    kind, msg, ctx = e["type"], e["msg"], e.get("ctx") or {}
    if kind not in _BUILTIN_ERRORS or kind in ("value_error", "assertion_error"):
        return f"fails the model's check {kind!r}"  # the model's own text may quote the value
    quoted = [str(ctx[k]) for k in sorted(_INPUT_CONTEXT & ctx.keys())]
    cuts = [msg.find(q) if q else len(msg) for q in quoted]
    head = "" if -1 in cuts else msg[: min(cuts, default=len(msg))].rstrip(" ,:'\"")
    return f"{head} ({kind})" if head else f"fails the check {kind!r}"


def _coerce_output(spec: AgentSpec, out: Any) -> BaseModel:
    assert spec.output is not None
    if isinstance(out, spec.output):
        # Re-validate: a model built with model_construct or mutated after creation may be wrong.
        return spec.output.model_validate(out.model_dump())
    if isinstance(out, BaseModel):
        out = out.model_dump()
    return spec.output.model_validate(out)


def _call(services: Services, item: Running, fn: Callable[..., Any], *args: Any) -> Any:
    services.listener.enter(item)
    result = fn(*args)
    services.listener.leave(item)
    return result


def _context(
    services: Services, spec: AgentSpec, item: Running, *, task_id: str, worker: str,
    run_id: str, index: int, attempt: int, meta: TaskMeta,
) -> AgentContext:  # fmt: skip
    return AgentContext(
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
    )


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
    store = services.store
    env = AgentResult(
        index=index,
        task_id=task_id,
        agent=spec.name,
        status=AgentStatus.OK,
        queued_at=meta.queued_at,
        worker=worker,
    )
    started = time.time()
    env.attempt, reason = store.start_task(run_id, index, worker)
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
        previous = store.envelope(run_id, index)
        return previous if previous is not None else env
    if not reason and ending.overdue(meta.deadline_at, started):
        reason = "deadline passed while queued"
    if not reason and env.attempt > services.max_attempts:
        _give_up(services, env, run_id, meta)
        return env
    if reason:
        env.status = AgentStatus.SKIPPED
        env.error = ErrorInfo(type="Skipped", message=reason)
        env.finished_at = time.time()
        store.finish_task(run_id, env, claim=False)
        return env
    env.started_at = started
    with services.listener.track(run_id, index, task_id) as item:
        ctx = _context(
            services, spec, item, task_id=task_id, worker=worker, run_id=run_id, index=index,
            attempt=env.attempt, meta=meta,
        )  # fmt: skip
        _run_agent(services, spec, env, item, payload, ctx)
        env.cancel_requested_at = item.cancel_at
    timings = _check_candidate(services, env, meta)
    env.finished_at = time.time()
    _record(services, env, run_id, meta, timings)
    return env


def _run_agent(
    services: Services, spec: AgentSpec, env: AgentResult, item: Running, payload: Any,
    ctx: AgentContext,
) -> None:  # fmt: skip
    """Validate the input, call the agent, trap its output; the outcome goes into ``env``."""
    try:
        inp = spec.input.model_validate(payload)
    except ValidationError as exc:
        env.status = AgentStatus.ERROR
        env.error = _validation_error(
            "InvalidPayload", exc, f"send a payload matching agent {spec.name!r}'s input model"
        )
        return
    try:
        out = _call(services, item, spec.fn, inp, ctx)
    except TaskCancelled as exc:
        env.status = AgentStatus.CANCELLED
        env.error = ErrorInfo(type="Cancelled", message=str(exc) or "cancelled")
        return
    except Exception as exc:  # a ValidationError raised inside the agent is its error
        env.status = AgentStatus.ERROR
        env.error = _error(exc)
        return
    try:
        env.output = _coerce_output(spec, out).model_dump(mode="json")
    except ValidationError as exc:  # the error trap: output fails its model
        env.status = AgentStatus.INVALID
        env.error = _validation_error(
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


def _check_candidate(services: Services, env: AgentResult, meta: TaskMeta) -> list[Sample]:
    """A would-be winner's validator; its time is recorded with the envelope (pre-flight warns
    about slow validators)."""
    if env.status is not AgentStatus.OK or not meta.validate_with:
        return []
    if not pattern_of(meta.pattern).claims_win:
        return []
    checked = time.perf_counter()
    _validate_candidate(services, env, meta.validate_with)
    return [duration_sample(VALIDATOR, meta.validate_with, time.perf_counter() - checked)]


def _validate_candidate(services: Services, env: AgentResult, name: str) -> None:
    check = services.registry.get(AgentKind.VALIDATOR, name)
    if check is None:
        env.status = AgentStatus.INVALID
        env.error = ErrorInfo(
            type="UnknownValidator",
            message=f"validator {name!r} is not registered in this worker",
            hint="load the module that defines it via ORCH_AGENT_MODULES on every worker",
        )
        return
    try:
        # bool() inside the try: a verdict that cannot be read as True/False is the validator's
        # error too.
        verdict = bool(check.fn(check.input.model_validate(env.output)))
    except Exception as exc:
        env.status = AgentStatus.INVALID
        env.error = _error(exc, hint=f"validator {name!r} raised; it should return True/False")
        return
    if not verdict:
        env.status = AgentStatus.INVALID
        env.error = ErrorInfo(type="Rejected", message=f"validator {name!r} rejected the output")


def _record(
    services: Services,
    env: AgentResult,
    run_id: str,
    meta: TaskMeta,
    timings: Sequence[Sample] = (),
) -> None:
    """Record the envelope; the win, or the last report, ends the run (the pattern says how)."""
    pattern = pattern_of(meta.pattern)
    claim = pattern.claims_win and env.status is AgentStatus.OK
    outcome = services.store.finish_task(run_id, env, claim=claim, stats=timings)
    if outcome.won:
        ending.win(services.store, services.revoke, run_id, env, meta.n)
    elif outcome.new and outcome.done >= outcome.n:
        pattern.on_all_reported(services.completion(run_id))


def execute_merge(
    services: Services,
    spec: AgentSpec,
    *,
    task_id: str,
    worker: str,
    run_id: str,
    meta: TaskMeta,
    quorum: int,
) -> dict[str, Any]:
    """A gather's merger: merge the valid outputs (by index, each once) or fail clearly."""
    store = services.store
    ended, envs = store.merge_inputs(run_id, time.time())
    if ended:
        return {"run_id": run_id, "skipped": "run already ended"}
    results = [envs[i] for i in sorted(envs)]
    ok = [r for r in results if r.status is AgentStatus.OK]
    if len(ok) < quorum:
        ending.finish(
            store,
            run_id,
            RunStatus.FAILED,
            error=f"quorum not met: {len(ok)} of {meta.n} subagents succeeded, {quorum} needed; "
            f"{failure_reasons(results)}",
            envelopes=envs,
        )
        return {"run_id": run_id, "status": RunStatus.FAILED.value}
    started = time.time()
    with services.listener.track(run_id, -1, task_id) as item:
        ctx = _context(
            services, spec, item, task_id=task_id, worker=worker, run_id=run_id, index=-1,
            attempt=1, meta=meta,
        )  # fmt: skip
        merged, error = _run_merger(services, spec, item, ok, ctx)
    merge_s = time.time() - started
    status = RunStatus.FAILED if error else RunStatus.SUCCEEDED
    partial = failure_reasons(results)
    if not error and partial:
        error = f"merged {len(ok)} of {meta.n} (quorum {quorum}); left out: {partial}"
    store.event(run_id, "merged", merger=spec.name, ok=str(not error or status.value))
    if status is RunStatus.SUCCEEDED:
        store.record_samples([duration_sample(MERGER, spec.name, merge_s)])
    ending.finish(
        store, run_id, status, error=error, merged=merged, merge_s=merge_s, envelopes=envs
    )
    return {"run_id": run_id, "status": status.value, "merge_s": round(merge_s, 6)}


def _run_merger(
    services: Services, spec: AgentSpec, item: Running, ok: list[AgentResult], ctx: AgentContext
) -> tuple[Any, str | None]:
    """(merged output, None) or (None, why the merge failed)."""
    try:
        inputs = [spec.input.model_validate(r.output) for r in ok]
        out = _call(services, item, spec.fn, inputs, ctx)
        return _coerce_output(spec, out).model_dump(mode="json"), None
    except TaskCancelled as exc:
        return None, f"merge cancelled: {exc}"
    except ValidationError as exc:
        return None, f"merger {spec.name!r}: " + _validation_error("InvalidMerge", exc, "").message
    except Exception as exc:
        return None, f"merger {spec.name!r} raised {_error(exc).message}"
