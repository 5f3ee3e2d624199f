"""The wrapper every subagent and merger runs inside: envelope, timing, validation,
cancellation and the race claim. Agents never raise into the canvas."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from workers.cancel import CancelListener, Running
from workers.errors import TaskCancelled
from workers.models import (
    AgentKind,
    AgentResult,
    AgentStatus,
    ErrorInfo,
    Pattern,
    RunStatus,
    TaskMeta,
)
from workers.outcome import failure_reasons
from workers.registry import AgentSpec, Registry
from workers.stats import MERGER, VALIDATOR, Sample, duration_sample, record_samples
from workers.store import RunStore

log = logging.getLogger(__name__)
_PROGRESS_EVERY_S = 0.2


@dataclass
class Services:
    """What the runtime needs in each worker process."""

    store: RunStore
    listener: CancelListener
    registry: Registry
    revoke: Callable[[list[str]], None]
    #: Sends a message the coordinator stored on the run record (a gather's merger).
    send: Callable[[str], None]


class AgentContext:
    """Handed to every agent and merger: who it is, its deadline, progress and cancellation."""

    def __init__(
        self,
        *,
        run_id: str,
        task_id: str,
        index: int,
        agent: str,
        pattern: Pattern,
        attempt: int,
        deadline_at: float,
        worker: str,
        running: Running | None = None,
        store: RunStore | None = None,
    ) -> None:
        self.run_id = run_id
        self.task_id = task_id
        self.index = index
        self.agent = agent
        self.pattern = pattern
        self.attempt = attempt
        self.deadline_at = deadline_at
        self.worker = worker
        self._running = running
        self._store = store
        self._last_progress = 0.0

    def remaining_s(self) -> float:
        """Seconds until the orchestration's deadline."""
        return self.deadline_at - time.time()

    def cancelled(self) -> bool:
        """True once this subtask was asked to stop (race lost, run cancelled, deadline)."""
        if self._running is not None and self._running.cancel_at is not None:
            return True
        return time.time() > self.deadline_at

    def raise_if_cancelled(self) -> None:
        """Raise TaskCancelled when asked to stop; cheap enough to call in a loop."""
        if self.cancelled():
            reason = self._running.reason if self._running else None
            raise TaskCancelled(reason or "deadline passed")

    def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once and raise TaskCancelled when asked to stop.

        Prefer it to ``time.sleep`` in agents: in the threads pool a plain sleep cannot be
        interrupted (an interrupt lands only between bytecodes).
        """
        limit = max(0.0, min(seconds, self.remaining_s()))
        if self._running is not None:
            self._running.cancelled.wait(limit)
        else:
            time.sleep(limit)
        self.raise_if_cancelled()

    def progress(self, fraction: float, message: str = "") -> None:
        """Report progress (0..1) to the run's event stream; throttled."""
        now = time.monotonic()
        if self._store is None or now - self._last_progress < _PROGRESS_EVERY_S:
            return
        self._last_progress = now
        try:
            self._store.event(
                self.run_id,
                "progress",
                index=str(self.index),
                fraction=f"{max(0.0, min(1.0, fraction)):.3f}",
                message=message[:200],
            )
        except Exception as exc:  # progress is best effort; never fail the agent for it
            log.debug("progress event dropped: %s", exc)


def _error(exc: BaseException, hint: str | None = None) -> ErrorInfo:
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" (at {tb[-1].filename}:{tb[-1].lineno})" if tb else ""
    return ErrorInfo(type=type(exc).__name__, message=f"{exc}{where}"[:2000], hint=hint)


def _validation_error(what: str, exc: ValidationError, hint: str) -> ErrorInfo:
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()[:10]
    )
    return ErrorInfo(type=what, message=problems[:2000], hint=hint)


def _coerce_output(spec: AgentSpec, out: Any) -> BaseModel:
    assert spec.output is not None
    if isinstance(out, spec.output):
        # Re-validate: a model built with model_construct or mutated after creation may be wrong.
        return spec.output.model_validate(out.model_dump())
    if isinstance(out, BaseModel):
        out = out.model_dump()
    return spec.output.model_validate(out)


def _call(
    services: Services,
    item: Running,
    fn: Callable[..., Any],
    *args: Any,
) -> Any:
    services.listener.enter(item)
    result = fn(*args)
    services.listener.leave(item)
    return result


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
    attempt, reason = store.start_task(run_id, index, worker)
    env.attempt = attempt
    if reason == "unknown-run":
        env.status = AgentStatus.ERROR
        env.error = ErrorInfo(
            type="RunNotFound",
            message=f"run {run_id} has no record (expired, or submitted under another prefix)",
            hint="check ORCH_KEY_PREFIX and ORCH_STATE_URL are the same for clients and workers",
        )
        return env
    if reason == "reported":
        if meta.pattern is Pattern.GATHER:
            # Redelivered after its envelope was recorded: its worker may have died before it
            # could send the merger. A second merger is harmless (the first result stands).
            send_then(services, run_id, only_if_unsent=True)
        previous = store.envelope(run_id, index)
        return previous if previous is not None else env
    if not reason and started > meta.deadline_at:
        reason = "deadline passed while queued"
    if reason:
        env.status = AgentStatus.SKIPPED
        env.error = ErrorInfo(type="Skipped", message=reason)
        env.finished_at = time.time()
        store.finish_task(run_id, env, claim=False)
        return env

    env.started_at = started
    with services.listener.track(run_id, index, task_id) as item:
        ctx = AgentContext(
            run_id=run_id,
            task_id=task_id,
            index=index,
            agent=spec.name,
            pattern=meta.pattern,
            attempt=attempt,
            deadline_at=meta.deadline_at,
            worker=worker,
            running=item,
            store=store,
        )
        try:
            inp = spec.input.model_validate(payload)
        except ValidationError as exc:
            env.status = AgentStatus.ERROR
            env.error = _validation_error(
                "InvalidPayload", exc, f"send a payload matching agent {spec.name!r}'s input model"
            )
        else:
            try:
                out = _call(services, item, spec.fn, inp, ctx)
            except TaskCancelled as exc:
                env.status = AgentStatus.CANCELLED
                env.error = ErrorInfo(type="Cancelled", message=str(exc) or "cancelled")
            except Exception as exc:  # a ValidationError raised inside the agent is its error
                env.status = AgentStatus.ERROR
                env.error = _error(exc)
            else:
                try:
                    env.output = _coerce_output(spec, out).model_dump(mode="json")
                except ValidationError as exc:  # the error trap: output fails its model
                    env.status = AgentStatus.INVALID
                    env.error = _validation_error(
                        "InvalidOutput",
                        exc,
                        f"agent {spec.name!r} returned data its output model rejects",
                    )
        env.cancel_requested_at = item.cancel_at
    timings: list[Sample] = []
    if env.status is AgentStatus.OK and meta.pattern is Pattern.RACE and meta.validate_with:
        checked = time.perf_counter()
        _validate_candidate(services, env, meta.validate_with)
        # Pre-flight warns about slow validators: their time is recorded with the envelope.
        timings.append(
            duration_sample(VALIDATOR, meta.validate_with, time.perf_counter() - checked)
        )
    env.finished_at = time.time()
    _record(services, env, run_id, meta, timings)
    return env


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
        verdict = check.fn(check.input.model_validate(env.output))
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
    store = services.store
    claim = meta.pattern is Pattern.RACE and env.status is AgentStatus.OK
    outcome = store.finish_task(run_id, env, claim=claim, stats=timings)
    if outcome.won:
        # Stop the others first (one round trip), then end the run; Celery's revoke only shows
        # them REVOKED in Flower (our flag and message stop them), so it goes last.
        store.request_cancel(
            run_id,
            f"race won by #{env.index}",
            keep=env.index,
            event={"type": "won", "index": str(env.index), "worker": env.worker or ""},
        )
        store.finalize(run_id, RunStatus.SUCCEEDED, winner=env.index)
        services.revoke([f"{run_id}.{i}" for i in range(meta.n) if i != env.index])
        return
    if not outcome.new or outcome.done < outcome.n:
        return
    if meta.pattern is Pattern.GATHER:
        send_then(services, run_id)
    elif meta.pattern is Pattern.SPAWN:
        _finalize_all(store, run_id)
    elif meta.pattern is Pattern.RACE and store.r.get(store.keys.winner(run_id)) is None:
        envs = store.envelopes(run_id)
        results = list(envs.values())
        store.finalize(
            run_id,
            RunStatus.FAILED,
            envelopes=envs,
            error="no racer produced a valid result: " + failure_reasons(sorted(results, key=_idx)),
        )


def send_then(services: Services, run_id: str, *, only_if_unsent: bool = False) -> None:
    """Send the message due once every member reported (a gather's merger), recording when.

    Called by the member whose envelope was the n-th; ``only_if_unsent`` by a redelivered one.
    """
    store = services.store
    key = store.keys.run(run_id)
    fields: list[str | None] = store.r.hmget(key, ["done", "n", "then", "then_sent_at"])  # type: ignore[assignment]
    done, n, then, sent = fields
    if not then or (only_if_unsent and (sent or int(done or 0) < int(n or 0))):
        return
    try:
        services.send(then)
    except Exception as exc:  # broker away past its retries: this subtask itself succeeded
        log.warning(
            "run %s: could not send the merger (%s); a coordinator sends it after "
            "ORCH_LOST_WORKER_S",
            run_id,
            exc,
        )
        return
    store.r.hset(key, "then_sent_at", repr(time.time()))


def _idx(env: AgentResult) -> int:
    return env.index


def _finalize_all(store: RunStore, run_id: str) -> None:
    if store.finalize_all_ok(run_id):
        return  # the common case, ended from the record's aggregates alone
    envs = store.envelopes(run_id)
    results = sorted(envs.values(), key=_idx)
    bad = failure_reasons(results)
    store.finalize(
        run_id,
        RunStatus.FAILED if bad else RunStatus.SUCCEEDED,
        envelopes=envs,
        error=f"{sum(1 for r in results if r.status is not AgentStatus.OK)} of "
        f"{len(results)} subagents failed: {bad}"
        if bad
        else None,
    )


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
    k = store.keys
    pipe = store.r.pipeline(transaction=False)
    pipe.exists(k.result(run_id))
    pipe.hset(k.run(run_id), "merge_started_at", repr(time.time()))
    pipe.hgetall(k.results(run_id))
    ended, _, raw = pipe.execute()
    if ended:
        return {"run_id": run_id, "skipped": "run already ended"}
    envs = {int(i): AgentResult.model_validate_json(v) for i, v in raw.items()}
    results = [envs[i] for i in sorted(envs)]
    ok = [r for r in results if r.status is AgentStatus.OK]
    if len(ok) < quorum:
        reasons = failure_reasons(results)
        store.finalize(
            run_id,
            RunStatus.FAILED,
            error=f"quorum not met: {len(ok)} of {meta.n} subagents succeeded, {quorum} needed; "
            f"{reasons}",
            envelopes=envs,
        )
        return {"run_id": run_id, "status": RunStatus.FAILED.value}
    started = time.time()
    error: str | None = None
    merged: Any = None
    with services.listener.track(run_id, -1, task_id) as item:
        ctx = AgentContext(
            run_id=run_id,
            task_id=task_id,
            index=-1,
            agent=spec.name,
            pattern=meta.pattern,
            attempt=1,
            deadline_at=meta.deadline_at,
            worker=worker,
            running=item,
            store=store,
        )
        try:
            inputs = [spec.input.model_validate(r.output) for r in ok]
            merged = _coerce_output(spec, _call(services, item, spec.fn, inputs, ctx)).model_dump(
                mode="json"
            )
        except TaskCancelled as exc:
            error = f"merge cancelled: {exc}"
        except ValidationError as exc:
            error = f"merger {spec.name!r}: " + _validation_error("InvalidMerge", exc, "").message
        except Exception as exc:
            error = f"merger {spec.name!r} raised {_error(exc).message}"
    merge_s = time.time() - started
    status = RunStatus.FAILED if error else RunStatus.SUCCEEDED
    partial = failure_reasons(results)
    if not error and partial:
        error = f"merged {len(ok)} of {meta.n} (quorum {quorum}); left out: {partial}"
    store.event(run_id, "merged", merger=spec.name, ok=str(not error or status.value))
    if status is RunStatus.SUCCEEDED:
        record_samples(store, [duration_sample(MERGER, spec.name, merge_s)])
    store.finalize(run_id, status, error=error, merged=merged, merge_s=merge_s, envelopes=envs)
    return {"run_id": run_id, "status": status.value, "merge_s": round(merge_s, 6)}
