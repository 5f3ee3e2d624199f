"""What the run pages show, read through the client and the store, with secret outputs taken out.

Everything here is a plain read (no Celery, no Flower): the handlers run these functions in
Flower's thread pool and render or serialise what they return.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from workers.models import AgentResult, Pattern, RunProgress, RunResult, RunStatus
from workers.run_result import Aggregates
from workers.run_tree import RunTree
from workers.spend_report import Ledger

if TYPE_CHECKING:
    from orchestrator.api.client import Orchestrator
    from workers.models import StoredRunResult

#: What a page or the JSON shows instead of the output of a ``Task(..., secret=True)``.
SECRET_SHOWN = "<secret>"
#: The status filter that matches every run still going (submitted or running).
OPEN = "open"
#: Most rows one list page shows.
MAX_ROWS = 500


class RunRow(BaseModel):
    """One run in the list: what an operator scans for."""

    run_id: str
    pattern: Pattern
    status: RunStatus
    final: bool
    n: int
    done: int = Field(description="Subagents that reported.")
    created_at: float
    finished_at: float | None = None
    wall_s: float = Field(description="Submit to finish, or so far while the run is going.")
    speedup: float | None = Field(None, description="None while the run is going.")
    tokens_spent: int = 0
    tokens_wasted: int | None = Field(None, description="None while the run is going.")
    cost_usd_spent: float | None = None
    cost_usd_wasted: float | None = None
    parent_run_id: str | None = Field(None, description="The run whose subagent started it.")


class RunList(BaseModel):
    """``/api/orchestrations``: the rows shown, newest first, and how many matched."""

    runs: list[RunRow]
    matched: int = Field(description="Recent runs matching the filters (the rows are the first).")
    recent: int = Field(description="Recent runs looked at (ORCH_RECENT_RUNS at most).")


class RunPage(BaseModel):
    """``/api/orchestrations/<run_id>``: the run as it is now, and its tree."""

    run_id: str
    final: bool
    result: RunResult | None = Field(None, description="Set once the run has ended.")
    progress: RunProgress | None = Field(None, description="Set while the run is going.")
    envelopes: list[AgentResult] = Field(
        default_factory=list, description="While going: the envelopes reported so far."
    )
    tree: RunTree
    secret: list[int] | None = Field(
        description="Subagents whose outputs are not shown (None: the record does not say, so "
        "no output is shown)."
    )


@dataclass(frozen=True)
class RunFilter:
    """The list's query: a status (or 'open'), a pattern, part of a run id, how many rows."""

    status: str = ""
    pattern: str = ""
    search: str = ""
    limit: int = 50

    def problem(self) -> str | None:
        """Why this filter cannot be applied (a value that names nothing), or None."""
        statuses = [OPEN, *(s.value for s in RunStatus)]
        patterns = [p.value for p in Pattern]
        if self.status and self.status not in statuses:
            return f"status {self.status!r} is none of {', '.join(statuses)}"
        if self.pattern and self.pattern not in patterns:
            return f"pattern {self.pattern!r} is none of {', '.join(patterns)}"
        if not 1 <= self.limit <= MAX_ROWS:
            return f"limit must be 1 to {MAX_ROWS}, not {self.limit}"
        return None

    def keeps(self, pattern: str | None, status: str | None) -> bool:
        """Whether a run with this record's pattern and status passes."""
        if pattern is None or status is None:
            return False  # expired between the index and the record
        if self.pattern and pattern != self.pattern:
            return False
        if self.status == OPEN:
            return not RunStatus(status).final
        return not self.status or status == self.status


def list_runs(orch: Orchestrator, flt: RunFilter) -> RunList:
    """The recent runs that pass ``flt``, newest first (the first ``flt.limit`` of them)."""
    store = orch.store
    ids = store.recent_runs(orch.settings.recent_runs)
    recent = len(ids)
    if flt.search:
        needle = flt.search.lower()
        ids = [i for i in ids if needle in i.lower()]
    if flt.status or flt.pattern:
        heads = store.runs_fields(ids, ["pattern", "status"])
        ids = [i for i, (p, s) in zip(ids, heads, strict=True) if flt.keeps(p, s)]
    now = time.time()
    rows = [
        row_of(rec, stored, now)
        for rec, stored in store.summaries(ids[: flt.limit])
        if rec.get("run_id")
    ]
    return RunList(runs=rows, matched=len(ids), recent=recent)


def row_of(record: dict[str, str], stored: StoredRunResult | None, now: float) -> RunRow:
    """A list row from a run record and its stored result (None while the run is going)."""
    created = float(record["created_at"])
    head = {
        "run_id": record["run_id"],
        "pattern": Pattern(record["pattern"]),
        "n": int(record["n"]),
        "created_at": created,
    }
    if stored is not None:
        r = stored.report
        return RunRow(
            **head,
            status=stored.status,
            final=True,
            done=int(record.get("done") or 0),
            finished_at=stored.finished_at,
            wall_s=r.wall_s,
            speedup=r.speedup,
            tokens_spent=r.tokens_spent,
            tokens_wasted=r.tokens_wasted,
            cost_usd_spent=r.cost_usd_spent,
            cost_usd_wasted=r.cost_usd_wasted,
            parent_run_id=stored.parent.run_id if stored.parent else None,
        )
    led = Ledger.of(record)
    status = RunStatus(record["status"])
    return RunRow(
        **head,
        status=status,
        final=status.final,
        done=Aggregates.of(record).done,
        wall_s=max(0.0, now - created),
        tokens_spent=led.tokens,
        cost_usd_spent=led.cost_usd if led.priced else None,
    )


def secret_indices(orch: Orchestrator, run_id: str) -> set[int] | None:
    """The subagents of a run whose outputs must not be shown; None when the record does not
    say (it was written before admission recorded them): then no output is shown."""
    (_, raw) = orch.store.run_fields(run_id, ["run_id", "secret"])
    return None if raw is None else {int(i) for i in json.loads(raw)}


def _hide(env: AgentResult) -> AgentResult:
    return env if env.output is None else env.model_copy(update={"output": SECRET_SHOWN})


def redact(result: RunResult, secret: set[int] | None) -> RunResult:
    """``result`` without the outputs of its secret subagents, nor a merge made of them (a
    merger's output may quote what it merged). ``secret`` None: no output at all."""
    if secret is not None and not secret:
        return result

    def hidden(env: AgentResult) -> bool:
        return secret is None or env.index in secret

    winner = result.winner
    return result.model_copy(
        update={
            "results": [_hide(e) if hidden(e) else e for e in result.results],
            "winner": _hide(winner) if winner is not None and hidden(winner) else winner,
            "merged": SECRET_SHOWN if result.merged is not None else None,
        }
    )


def redact_envelopes(envs: list[AgentResult], secret: set[int] | None) -> list[AgentResult]:
    """Envelopes without the outputs of secret subagents (all of them when ``secret`` is None)."""
    return [_hide(e) if secret is None or e.index in secret else e for e in envs]


def tree_of(orch: Orchestrator, run_id: str) -> RunTree:
    """The run's tree (``Run.tree()``: the run and its child runs, with their totals)."""
    return orch.get_run(run_id).tree()


def redact_tree(orch: Orchestrator, tree: RunTree) -> RunTree:
    """The tree with every run's secret outputs taken out (each run has its own)."""
    result = tree.result
    if result is not None:
        result = redact(result, secret_indices(orch, tree.run_id))
    children = [redact_tree(orch, child) for child in tree.children]
    return tree.model_copy(update={"result": result, "children": children})


def run_page(orch: Orchestrator, run_id: str) -> RunPage:
    """The run's page: its result (rebuilt from every envelope, late losers too) or its
    progress and the envelopes so far, and its tree; RunNotFound for an unknown run."""
    run = orch.get_run(run_id)
    secret = secret_indices(orch, run_id)
    result = run.result()
    tree = redact_tree(orch, tree_of(orch, run_id))
    shown = sorted(secret) if secret is not None else None
    if result is not None:
        full = redact(run.refreshed(), secret)
        return RunPage(run_id=run_id, final=True, result=full, tree=tree, secret=shown)
    envs = orch.store.envelopes(run_id)
    return RunPage(
        run_id=run_id,
        final=False,
        progress=run.status(),
        envelopes=redact_envelopes([envs[i] for i in sorted(envs)], secret),
        tree=tree,
        secret=shown,
    )
