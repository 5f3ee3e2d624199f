"""A gather's merger, around its function: read the envelopes once, check the quorum, merge,
and end the run (sync here; ``workers/runtime_async.py`` awaits an ``async def`` merger between
the same two steps)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from workers import ending
from workers.cancel import Running
from workers.error_info import error_info, validation_error
from workers.errors import TaskCancelled
from workers.ledger import SpendDelta
from workers.models import AgentResult, AgentStatus, RunStatus, TaskMeta
from workers.registry import AgentSpec
from workers.run_result import failure_reasons
from workers.runtime import call_agent, coerce_output, make_context
from workers.services import Services
from workers.spending import tree_spend
from workers.stats import MERGER, duration_sample
from workers.store import NO_SPEND


@dataclass
class MergePlan:
    """What a merger merges: every envelope, and the valid ones in index order."""

    envs: dict[int, AgentResult]
    results: list[AgentResult]
    ok: list[AgentResult]
    started: float = 0.0


def merge_begin(
    services: Services, run_id: str, meta: TaskMeta, quorum: int
) -> MergePlan | dict[str, Any]:
    """The plan, or the task's result when there is nothing to merge (the run ended already,
    or too few subagents succeeded: then the run fails here)."""
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
    return MergePlan(envs, results, ok, time.time())


def merge_end(
    services: Services, spec: AgentSpec, run_id: str, meta: TaskMeta, quorum: int,
    plan: MergePlan, merged: Any, error: str | None, spend: SpendDelta = NO_SPEND,
) -> dict[str, Any]:  # fmt: skip
    """End the run with the merged output (or why the merge failed); the merger's own spend
    joins the ledger first."""
    store = services.store
    if spend:
        store.add_spend(run_id, spend)  # a crossing now changes nothing: the run ends here
        if meta.ancestors:
            tree_spend(services, meta, spend)  # ... but an ancestor's may stop it
    merge_s = time.time() - plan.started
    status = RunStatus.FAILED if error else RunStatus.SUCCEEDED
    partial = failure_reasons(plan.results)
    if not error and partial:
        error = f"merged {len(plan.ok)} of {meta.n} (quorum {quorum}); left out: {partial}"
    store.event(run_id, "merged", merger=spec.name, ok=str(not error or status.value))
    if status is RunStatus.SUCCEEDED:
        store.record_samples([duration_sample(MERGER, spec.name, merge_s)])
    ending.finish(
        store, run_id, status, error=error, merged=merged, merge_s=merge_s, envelopes=plan.envs
    )
    return {"run_id": run_id, "status": status.value, "merge_s": round(merge_s, 6)}


def merge_failure(spec: AgentSpec, exc: BaseException) -> str:
    """Why a merge failed, as the run's error."""
    if isinstance(exc, TaskCancelled):
        return f"merge cancelled: {exc}"
    if isinstance(exc, ValidationError):
        return f"merger {spec.name!r}: " + validation_error("InvalidMerge", exc, "").message
    return f"merger {spec.name!r} raised {error_info(exc).message}"


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
    plan = merge_begin(services, run_id, meta, quorum)
    if not isinstance(plan, MergePlan):
        return plan
    with services.listener.track(run_id, -1, task_id) as item:
        ctx = make_context(
            services, spec, item, task_id=task_id, worker=worker, run_id=run_id, index=-1,
            attempt=1, meta=meta,
        )  # fmt: skip
        merged, error = _run_merger(services, spec, item, plan.ok, ctx)
    spend = ctx.meter.take()
    return merge_end(services, spec, run_id, meta, quorum, plan, merged, error, spend)


def _run_merger(
    services: Services, spec: AgentSpec, item: Running, ok: list[AgentResult], ctx: Any
) -> tuple[Any, str | None]:
    """(merged output, None) or (None, why the merge failed)."""
    try:
        inputs = [spec.input.model_validate(r.output) for r in ok]
        out = call_agent(services, item, spec.fn, inputs, ctx)
        return coerce_output(spec, out).model_dump(mode="json"), None
    except (TaskCancelled, Exception) as exc:
        return None, merge_failure(spec, exc)
