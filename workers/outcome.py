"""Turn a run record and its envelopes into a RunResult with its RoiReport (pure functions)."""

from __future__ import annotations

import statistics
from typing import Any

from workers.models import (
    AgentResult,
    AgentStatus,
    ErrorInfo,
    Execution,
    Pattern,
    Prediction,
    RoiReport,
    RunResult,
    RunStatus,
)


def fill_missing(
    record: dict[str, str],
    envelopes: dict[int, AgentResult],
    started: dict[int, str],
    agents: list[str],
    cancel_at: float | None,
) -> list[AgentResult]:
    """One envelope per task index: what arrived, and a stand-in for what did not."""
    run_id = record["run_id"]
    out: list[AgentResult] = []
    for index, agent in enumerate(agents):
        env = envelopes.get(index)
        if env is None:
            # Started but silent: it is being stopped (or its worker died). Never started: skipped.
            worker = started.get(index)
            status = AgentStatus.CANCELLED if worker else AgentStatus.SKIPPED
            env = AgentResult(
                index=index,
                task_id=f"{run_id}.{index}",
                agent=agent,
                status=status,
                queued_at=_float(record.get("queued_at")),
                worker=worker,
                cancel_requested_at=cancel_at,
                error=ErrorInfo(
                    type="NotReported",
                    message=f"started on {worker}; no result when the run ended"
                    if worker
                    else "never started before the run ended",
                ),
            )
        out.append(env)
    return out


def roi(
    results: list[AgentResult],
    *,
    created_at: float,
    finished_at: float,
    merge_s: float = 0.0,
    winner: int | None = None,
) -> RoiReport:
    """Measured return of one run."""
    n = len(results)
    wall = max(finished_at - created_at, 1e-9)
    spent = sum(r.ran_s for r in results)
    if winner is not None:
        # A race's sequential alternative is the winner alone; every other racer is waste.
        wasted = sum(r.ran_s for r in results if r.index != winner)
        sequential = results[winner].ran_s
    else:
        wasted = sum(r.ran_s for r in results if r.status is AgentStatus.CANCELLED)
        sequential = spent
    sequential += merge_s
    queued = [r.queued_at for r in results if r.queued_at is not None]
    waits = [
        r.started_at - r.queued_at
        for r in results
        if r.started_at is not None and r.queued_at is not None
    ]
    latencies = [lat for r in results if (lat := r.cancel_latency_s) is not None]
    speedup = sequential / wall
    return RoiReport(
        n=n,
        wall_s=wall,
        sequential_estimate_s=sequential,
        speedup=speedup,
        efficiency=speedup / n if n else 0.0,
        work_spent_s=spent + merge_s,
        work_wasted_s=wasted,
        merge_s=merge_s,
        coordinator_overhead_s=max(0.0, min(queued) - created_at) if queued else 0.0,
        queue_wait_s=statistics.fmean(waits) if waits else 0.0,
        cancel_latency_p50_s=statistics.median(latencies) if latencies else None,
        cancel_latency_max_s=max(latencies) if latencies else None,
    )


def failure_reasons(results: list[AgentResult]) -> str:
    """One line per subtask that did not succeed."""
    lines = []
    for r in results:
        if r.status is AgentStatus.OK:
            continue
        why = f"{r.error.type}: {r.error.message}" if r.error else r.status.value
        lines.append(f"#{r.index} {r.agent} {r.status.value}: {why}")
    return "; ".join(lines)


def build_result(
    record: dict[str, str],
    results: list[AgentResult],
    *,
    status: RunStatus,
    finished_at: float,
    error: str | None = None,
    merged: Any = None,
    merge_s: float = 0.0,
    winner: int | None = None,
) -> RunResult:
    """The RunResult every finaliser writes."""
    created = float(record["created_at"])
    return RunResult(
        run_id=record["run_id"],
        pattern=Pattern(record["pattern"]),
        status=status,
        results=results,
        merged=merged,
        winner=results[winner] if winner is not None else None,
        error=error,
        created_at=created,
        finished_at=finished_at,
        report=roi(
            results, created_at=created, finished_at=finished_at, merge_s=merge_s, winner=winner
        ).model_copy(
            update={
                "execution": Execution(record.get("execution") or Execution.PARALLEL.value),
                "prediction": _prediction(record.get("prediction")),
            }
        ),
    )


def _prediction(raw: str | None) -> Prediction | None:
    # Stored by the client at submit; a record written without pre-flight has none.
    return Prediction.model_validate_json(raw) if raw else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None
