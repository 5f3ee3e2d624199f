"""Turn a run record and its envelopes into a RunResult with its RoiReport (pure functions)."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from workers.lineage import child_ids, parent_in
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
from workers.names import subtask_id
from workers.spend_report import budget_reason, spend_fields

__all__ = [
    "Aggregates",
    "budget_reason",
    "build_result",
    "failure_reasons",
    "fill_missing",
    "finish_args",
    "merge_wait",
    "roi",
    "roi_of_all_ok",
]


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
                task_id=subtask_id(run_id, index),
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


@dataclass(frozen=True)
class Aggregates:
    """Sums over a run's recorded envelopes, kept on the run record by finish.lua.

    Enough to end a run whose every subtask reported ok without reading one envelope.
    """

    done: int
    counts: dict[str, int]
    ran_s: float
    wait_s: float
    waits: int
    min_queued: float | None
    stop_requested: int
    throttled_s: float = 0.0
    retries: int = 0

    @classmethod
    def of(cls, record: dict[str, str]) -> Aggregates:
        """Read them off a run record (fields 'done' and 'agg:*')."""
        counts = {
            name[4:]: int(v)
            for name, v in record.items()
            if name.startswith("agg:") and name[4:] in _STATUSES
        }
        return cls(
            done=int(record.get("done") or 0),
            counts=counts,
            ran_s=float(record.get("agg:ran") or 0.0),
            wait_s=float(record.get("agg:wait") or 0.0),
            waits=int(record.get("agg:waits") or 0),
            min_queued=_float(record.get("agg:min_queued")),
            stop_requested=int(record.get("agg:stop_requested") or 0),
            throttled_s=float(record.get("agg:throttled") or 0.0),
            retries=int(record.get("agg:retries") or 0),
        )

    def all_ok(self, n: int) -> bool:
        """Every one of the n subtasks reported ok, and none was asked to stop."""
        return (
            self.done == n
            and self.counts.get(AgentStatus.OK.value, 0) == n
            and (self.stop_requested == 0)
        )


_STATUSES = frozenset(s.value for s in AgentStatus)


def finish_args(env: AgentResult) -> list[str]:
    """What finish.lua adds to the aggregates for one new envelope (ARGV[8..13])."""
    waited = (
        repr(env.started_at - env.queued_at)
        if env.started_at is not None and env.queued_at is not None
        else ""
    )
    return [
        repr(env.ran_s),
        waited,
        repr(env.queued_at) if env.queued_at is not None else "",
        "1" if env.cancel_requested_at is not None else "0",
        repr(env.throttled_s) if env.throttled_s else "0",
        str(env.retries),
    ]


def roi(
    results: list[AgentResult],
    *,
    created_at: float,
    finished_at: float,
    merge_s: float = 0.0,
    merge_wait_s: float = 0.0,
    winner: int | None = None,
) -> RoiReport:
    """Measured return of one run, from its envelopes (the one place ROI is computed, with
    ``roi_of_all_ok``; every reader shows these numbers)."""
    spent = sum(r.ran_s for r in results)
    vs_winner = None
    if winner is not None:
        # A race replaces trying its racers one after another in index order until the first
        # valid one: racers 0..k, each for as long as it ran here, where k is the first racer
        # whose result was valid (every ok racer was validated): the winner, or one before it
        # that finished valid after the win (see RoiReport).
        first_valid = min(r.index for r in results if r.status is AgentStatus.OK)
        wasted = sum(r.ran_s for r in results if r.index != winner)
        sequential = sum(r.ran_s for r in results if r.index <= first_valid)
        vs_winner = results[winner].ran_s / max(finished_at - created_at, 1e-9)
    else:
        wasted = sum(r.ran_s for r in results if r.status is AgentStatus.CANCELLED)
        sequential = spent
    queued = [r.queued_at for r in results if r.queued_at is not None]
    waits = [
        r.started_at - r.queued_at
        for r in results
        if r.started_at is not None and r.queued_at is not None
    ]
    latencies = [lat for r in results if (lat := r.cancel_latency_s) is not None]
    return _report(
        n=len(results),
        wall=finished_at - created_at,
        spent=spent,
        wasted=wasted,
        sequential=sequential + merge_s,
        merge_s=merge_s,
        merge_wait_s=merge_wait_s,
        first_queued=min(queued) if queued else None,
        created_at=created_at,
        queue_wait=statistics.fmean(waits) if waits else 0.0,
        latencies=latencies,
        speedup_vs_winner=vs_winner,
        throttled_s=sum(r.throttled_s for r in results),
        retries=sum(r.retries for r in results),
    )


def roi_of_all_ok(
    agg: Aggregates,
    n: int,
    *,
    created_at: float,
    finished_at: float,
    merge_s: float = 0.0,
    merge_wait_s: float = 0.0,
) -> RoiReport:
    """The same report as ``roi`` for a run whose n subtasks all reported ok (``all_ok``)."""
    return _report(
        n=n,
        wall=finished_at - created_at,
        spent=agg.ran_s,
        wasted=0.0,
        sequential=agg.ran_s + merge_s,
        merge_s=merge_s,
        merge_wait_s=merge_wait_s,
        first_queued=agg.min_queued,
        created_at=created_at,
        queue_wait=agg.wait_s / agg.waits if agg.waits else 0.0,
        latencies=[],
        speedup_vs_winner=None,
        throttled_s=agg.throttled_s,
        retries=agg.retries,
    )


def merge_wait(record: dict[str, str], finished_at: float) -> float:
    """A gather's merger's queue wait: from the moment every member had reported to the
    moment the merger started (or the run ended, when it never started); 0 without a merger."""
    # An early quorum sends the merger before every member reported.
    reported = _float(record.get("quorum_at")) or _float(record.get("all_reported_at"))
    if not record.get("merge") or reported is None:
        return 0.0
    started = _float(record.get("merge_started_at"))
    return max(0.0, (started if started is not None else finished_at) - reported)


def _report(
    *,
    n: int,
    wall: float,
    spent: float,
    wasted: float,
    sequential: float,
    merge_s: float,
    merge_wait_s: float,
    first_queued: float | None,
    created_at: float,
    queue_wait: float,
    latencies: list[float],
    speedup_vs_winner: float | None,
    throttled_s: float,
    retries: int,
) -> RoiReport:
    wall = max(wall, 1e-9)
    speedup = sequential / wall
    return RoiReport(
        n=n,
        wall_s=wall,
        sequential_estimate_s=sequential,
        speedup=speedup,
        speedup_vs_winner=speedup_vs_winner,
        efficiency=speedup / n if n else 0.0,
        work_spent_s=spent + merge_s,
        work_wasted_s=wasted,
        merge_s=merge_s,
        merge_wait_s=merge_wait_s,
        coordinator_overhead_s=(
            max(0.0, first_queued - created_at) if first_queued is not None else 0.0
        ),
        queue_wait_s=queue_wait,
        cancel_latency_p50_s=statistics.median(latencies) if latencies else None,
        cancel_latency_max_s=max(latencies) if latencies else None,
        throttled_s=throttled_s,
        throttled_mean_s=throttled_s / n if n else 0.0,
        retries=retries,
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
    report: RoiReport | None = None,
) -> RunResult:
    """The RunResult every finaliser writes (``report``: already measured, else from results)."""
    created = float(record["created_at"])
    if report is None:
        report = roi(
            results,
            created_at=created,
            finished_at=finished_at,
            merge_s=merge_s,
            merge_wait_s=merge_wait(record, finished_at),
            winner=winner,
        )
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
        parent=parent_in(record),
        children=child_ids(record),
        report=report.model_copy(
            update={
                "execution": Execution(record.get("execution") or Execution.PARALLEL.value),
                "prediction": _prediction(record.get("prediction")),
                **spend_fields(record, results, winner),
                **pattern_fields(record, results),
            }
        ),
    )


def pattern_fields(record: dict[str, str], results: list[AgentResult]) -> dict[str, Any]:
    """The report's fields of a hedged race and an early quorum (none for other runs)."""
    out: dict[str, Any] = {}
    if record.get("hedge_after_s"):
        skipped = sum(1 for r in results if r.status is AgentStatus.SKIPPED)
        out["hedge_after_s"] = float(record["hedge_after_s"])
        out["hedged_skipped"] = skipped
        out["hedged_started"] = len(results) - skipped
    if record.get("early_quorum"):
        out["early_quorum"] = int(record["early_quorum"])
    return out


def _prediction(raw: str | None) -> Prediction | None:
    # Stored by the client at submit; a record written without pre-flight has none.
    return Prediction.model_validate_json(raw) if raw else None


def _float(value: str | None) -> float | None:
    return float(value) if value else None
