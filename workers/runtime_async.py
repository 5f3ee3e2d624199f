"""The wrapper around every ``async def`` agent and merger, on the worker process's event loop.

The very steps of ``workers/runtime.py`` and ``workers/merging.py`` (same envelope, same Lua
scripts, same race claim, recorded once per index); the round trips of the common path
(start.lua, finish.lua) are awaited through the loop's multiplexer, so a thousand subagents in
flight cost no thread each. The rare paths (a subtask that must not run, the win, the last
report, the merge's bookkeeping) reuse the synchronous code in a worker thread.

A cancel (race lost, ``Run.cancel()``, the deadline) reaches the agent as ``CancelledError`` at
its current ``await``: its HTTP request is abandoned and its connection closed, so a provider
stops generating.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from workers.agent_loop import run_timed
from workers.cancel import Running
from workers.errors import BrokerUnavailable, LoopBlocked, TaskCancelled
from workers.hedging import wait_turn_async
from workers.ledger import SpendDelta
from workers.merging import MergePlan, merge_begin, merge_end, merge_failure
from workers.models import AgentResult, AgentStatus, TaskMeta
from workers.patterns import pattern_of
from workers.registry import AgentSpec
from workers.runtime import (
    after_record,
    cancelled,
    coerce_output,
    failed,
    judge,
    make_context,
    must_not_run,
    new_envelope,
    not_run,
    parse_input,
    trap_output,
    validator_of,
    wants_check,
)
from workers.services import Services
from workers.spending import tree_spend
from workers.stats import VALIDATOR, Sample, duration_sample

T = TypeVar("T")


class _Child:
    """The agent's own task, which a cancel stops (the listener calls ``request`` from its
    thread; the cancel itself runs on the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.task: asyncio.Task[Any] | None = None

    def request(self) -> None:
        self.loop.call_soon_threadsafe(self._cancel)

    def _cancel(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


async def _guarded(
    services: Services, item: Running, child: _Child, label: str,
    make: Callable[[], Coroutine[Any, Any, Any]],
) -> Any:  # fmt: skip
    """Await the agent's coroutine as a child task; TaskCancelled when we stopped it,
    LoopBlocked (saying where) when the watchdog did, else whatever the agent raised."""
    agent_loop = services.agent_loop()
    services.listener.enter(item)  # raises TaskCancelled when the stop came first
    timed = agent_loop.timed(make(), label)
    task = child.task = asyncio.get_running_loop().create_task(run_timed(timed))
    try:
        return await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise  # not ours: the worker is shutting down
        raise TaskCancelled(item.reason or "cancelled") from None
    except LoopBlocked:
        block = timed.block
        if block is None:
            raise
        raise LoopBlocked(
            block.describe(), agent=label, blocked_s=block.blocked_s, where=block.where
        ) from None
    finally:
        services.listener.leave(item)


async def retrying(services: Services, make: Callable[[], Awaitable[T]]) -> T:
    """A state Redis call, retried while the server is away (ORCH_STATE_RETRIES, backoff up to
    2 s, as the synchronous client does); then BrokerUnavailable (the message is requeued)."""
    delay_s = 0.05
    for attempt in range(services.state_retries + 1):
        try:
            return await make()
        except BrokerUnavailable:
            if attempt >= services.state_retries:
                raise
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, 2.0)
    raise AssertionError("unreachable")


async def execute_agent_async(
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
    """Run one async subagent and return its envelope (recorded in Redis once), when one of
    the process's ORCH_AIO__MAX_IN_FLIGHT places is free (a hedged racer waits its turn
    before it takes one)."""
    await wait_turn_async(services, run_id, index, task_id, meta)
    async with services.aio_slots():
        return await _execute_agent(services, spec, run_id, index, meta, payload, task_id, worker)


async def _execute_agent(
    services: Services, spec: AgentSpec, run_id: str, index: int, meta: TaskMeta,
    payload: Any, task_id: str, worker: str,
) -> AgentResult:  # fmt: skip
    aio = services.aio()
    env = new_envelope(spec, task_id=task_id, worker=worker, index=index, meta=meta)
    started = time.time()
    env.attempt, reason = await retrying(services, lambda: aio.start_task(run_id, index, worker))
    if must_not_run(services, env, reason, started, meta):
        return await asyncio.to_thread(
            not_run, services, env, reason, run_id=run_id, started=started, meta=meta
        )
    env.started_at = started
    child = _Child(asyncio.get_running_loop())
    with services.listener.track_async(run_id, index, task_id, child.request) as item:
        ctx = make_context(
            services, spec, item, task_id=task_id, worker=worker, run_id=run_id, index=index,
            attempt=env.attempt, meta=meta,
        )  # fmt: skip
        inp = parse_input(spec, env, payload)
        if inp is not None:
            label = f"agent {spec.name!r} (run {run_id} #{index})"
            try:
                out = await _guarded(services, item, child, label, lambda: spec.fn(inp, ctx))
            except TaskCancelled as exc:
                cancelled(env, exc)
            except Exception as exc:
                failed(env, exc)
            else:
                trap_output(spec, env, out)
        env.cancel_requested_at = item.cancel_at
    if ctx.children:
        await asyncio.to_thread(ctx.close_children)
    if ctx.meter.inflight:  # flushes on their way: the envelope carries only the rest
        await asyncio.gather(*ctx.meter.inflight, return_exceptions=True)
    env.usage = ctx.meter.usage
    env.throttled_s, env.retries = ctx.throttled_s, ctx.retries
    timings = await _check_candidate(services, env, meta)
    env.finished_at = time.time()
    await _record(services, env, run_id, meta, timings, ctx.meter.take())
    return env


async def _check_candidate(services: Services, env: AgentResult, meta: TaskMeta) -> list[Sample]:
    """A would-be winner's validator (sync or async), as in workers/runtime.py."""
    if not wants_check(env, meta):
        return []
    name = meta.validate_with or ""
    checked = time.perf_counter()
    check = validator_of(services, env, name)
    if check is not None:
        try:
            raw = check.fn(check.input.model_validate(env.output))
            judge(env, name, bool(await raw if inspect.isawaitable(raw) else raw))
        except Exception as exc:
            judge(env, name, exc)
    return [duration_sample(VALIDATOR, name, time.perf_counter() - checked)]


async def _record(
    services: Services,
    env: AgentResult,
    run_id: str,
    meta: TaskMeta,
    timings: list[Sample],
    spend: SpendDelta,
) -> None:
    """Record the envelope; what that decided (a win, a crossed budget, the last report) runs
    in a thread: it sends Celery messages and revokes, which block."""
    claim = pattern_of(meta.pattern).claims_win and env.status is AgentStatus.OK
    aio = services.aio()
    outcome = await retrying(
        services, lambda: aio.finish_task(run_id, env, claim=claim, stats=timings, spend=spend)
    )
    if meta.ancestors and spend:
        await asyncio.to_thread(tree_spend, services, meta, spend)
    decided = outcome.won or outcome.crossed or outcome.quorum
    if decided or (outcome.new and outcome.done >= outcome.n):
        await asyncio.to_thread(after_record, services, env, run_id, meta, outcome)


async def execute_merge_async(
    services: Services,
    spec: AgentSpec,
    *,
    task_id: str,
    worker: str,
    run_id: str,
    meta: TaskMeta,
    quorum: int,
) -> dict[str, Any]:
    """A gather's async merger (see workers/merging.py)."""
    plan = await asyncio.to_thread(merge_begin, services, run_id, meta, quorum)
    if not isinstance(plan, MergePlan):
        return plan
    merged: Any = None
    error: str | None = None
    child = _Child(asyncio.get_running_loop())
    with services.listener.track_async(run_id, -1, task_id, child.request) as item:
        ctx = make_context(
            services, spec, item, task_id=task_id, worker=worker, run_id=run_id, index=-1,
            attempt=1, meta=meta,
        )  # fmt: skip
        try:
            inputs = [spec.input.model_validate(r.output) for r in plan.ok]
            label = f"merger {spec.name!r} (run {run_id})"
            out = await _guarded(services, item, child, label, lambda: spec.fn(inputs, ctx))
            merged = coerce_output(spec, out).model_dump(mode="json")
        except (TaskCancelled, Exception) as exc:
            error = merge_failure(spec, exc)
    if ctx.meter.inflight:
        await asyncio.gather(*ctx.meter.inflight, return_exceptions=True)
    return await asyncio.to_thread(
        merge_end, services, spec, run_id, meta, quorum, plan, merged, error, ctx.meter.take()
    )
