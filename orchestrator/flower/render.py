"""HTML of the run list and the run tree (pure functions: data in, escaped markup out).

Every value that comes from a user (run ids, agent names, errors, outputs) goes through
:func:`esc`; the markup uses Flower's own classes (its cards, tables, filters and badges), so
the pages look like the rest of Flower in its light and dark themes.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlencode

from orchestrator.cli.report import duration
from orchestrator.cli.spend import tokens, usd
from orchestrator.flower.data import OPEN, RunFilter, RunList, RunRow
from workers.models import AgentStatus, Pattern, RunStatus
from workers.run_tree import RunTree, TreeTotals

#: Bootstrap's badge colour of each run status.
RUN_BADGES: dict[RunStatus, str] = {
    RunStatus.SUBMITTED: "text-bg-info",
    RunStatus.RUNNING: "text-bg-primary",
    RunStatus.SUCCEEDED: "text-bg-success",
    RunStatus.FAILED: "text-bg-danger",
    RunStatus.CANCELLED: "text-bg-warning",
    RunStatus.TIMED_OUT: "text-bg-secondary",
    RunStatus.BUDGET_EXCEEDED: "text-bg-dark",
}
#: ... and of each subagent outcome.
AGENT_BADGES: dict[AgentStatus, str] = {
    AgentStatus.OK: "text-bg-success",
    AgentStatus.ERROR: "text-bg-danger",
    AgentStatus.INVALID: "text-bg-danger",
    AgentStatus.CANCELLED: "text-bg-warning",
    AgentStatus.LOST: "text-bg-secondary",
    AgentStatus.SKIPPED: "text-bg-light",
}

#: The few rules Flower's stylesheet has no class for.
STYLE = """<style>
.orch-table { font-size: .875rem; }
.orch-table td, .orch-table th { white-space: nowrap; font-variant-numeric: tabular-nums; }
.task-state-filter { text-decoration: none; }
.orch-run.detail-page { width: min(100%, 110rem); }
.orch-run .metric-value { font-size: 1.5rem; }
.orch-table td.num, .orch-table th.num { text-align: right; }
.orch-table td.wrap { white-space: normal; overflow-wrap: anywhere; }
.orch-filters { display: flex; flex-wrap: wrap; gap: .75rem; align-items: center; }
.orch-filters .form-control, .orch-filters .form-select { width: auto; }
.orch-timeline svg { max-width: 100%; height: auto; display: block; overflow: visible; }
.orch-outputs { max-height: 40rem; overflow: auto; }
.orch-outputs .detail-code { max-height: 12rem; margin-bottom: .75rem; }
.orch-tree, .orch-tree ul { list-style: none; padding-left: 1.25rem; margin: 0; }
.orch-tree { padding: .75rem 1rem; }
.orch-tree li { padding: .2rem 0; }
.orch-tree .orch-node { display: inline-flex; gap: .5rem; align-items: center; flex-wrap: wrap; }
.orch-tree .orch-sub { color: var(--flower-text-muted); font-size: .8125rem; }
.orch-card-title { padding: .75rem 1rem; margin: 0; font-size: 1rem; font-weight: 700;
  border-bottom: 1px solid var(--bs-border-color); background: var(--flower-surface-subtle); }
.orch-card-body { padding: .75rem 1rem; }
.orch-muted { color: var(--flower-text-muted); }
</style>"""


def esc(value: object) -> str:
    """Text as HTML (quotes too: it may end up in an attribute)."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Links:
    """Where a page links to, from the running Flower (its URL prefix included)."""

    runs: str
    run: Callable[[str], str]
    task: Callable[[str], str]
    api: str = ""


def badge(status: RunStatus | AgentStatus) -> str:
    """A status as a coloured pill."""
    cls = RUN_BADGES[status] if isinstance(status, RunStatus) else AGENT_BADGES[status]
    return f'<span class="badge rounded-pill {cls}">{esc(status.value)}</span>'


def when(ts: float | None) -> str:
    """An epoch time as an operator reads it (UTC, to the second, with ms on hover)."""
    if ts is None:
        return '<span class="orch-muted">-</span>'
    at = datetime.fromtimestamp(ts, UTC)
    return f'<time title="{at.isoformat()}">{at.strftime("%Y-%m-%d %H:%M:%S")}</time>'


def speed(value: float | None) -> str:
    """A speedup as the report prints it."""
    return "-" if value is None else f"x{value:.2f}"


# -- the list ------------------------------------------------------------------------------
def _filter_url(links: Links, flt: RunFilter, **change: str) -> str:
    query = {"status": flt.status, "pattern": flt.pattern, "q": flt.search, **change}
    kept = {k: v for k, v in query.items() if v}
    return links.runs + ("?" + urlencode(kept) if kept else "")


def _status_pills(links: Links, flt: RunFilter) -> str:
    choices = [("", "All"), (OPEN, "Open"), *((s.value, s.value) for s in RunStatus)]
    pills = []
    for value, label in choices:
        active = " active" if flt.status == value else ""
        pills.append(
            f'<a class="task-state-filter{active}" '
            f'href="{esc(_filter_url(links, flt, status=value))}">{esc(label)}</a>'
        )
    return '<nav class="task-state-filters" aria-label="Status">' + "".join(pills) + "</nav>"


def _search_form(links: Links, flt: RunFilter) -> str:
    options = ['<option value="">every pattern</option>']
    for p in Pattern:
        chosen = " selected" if flt.pattern == p.value else ""
        options.append(f'<option value="{esc(p.value)}"{chosen}>{esc(p.value)}</option>')
    return (
        f'<form class="orch-filters mb-3" method="get" action="{esc(links.runs)}">'
        f'<input type="hidden" name="status" value="{esc(flt.status)}">'
        f'<select class="form-select form-select-sm" name="pattern" aria-label="Pattern">'
        f"{''.join(options)}</select>"
        f'<input class="form-control form-control-sm" type="search" name="q" '
        f'placeholder="run id" value="{esc(flt.search)}" aria-label="Run id">'
        '<button class="btn btn-sm btn-primary" type="submit">Filter</button>'
        f'<a class="btn btn-sm btn-outline-secondary" href="{esc(links.runs)}">Clear</a>'
        "</form>"
    )


_COLUMNS = (
    ("Run", ""),
    ("Pattern", ""),
    ("Status", ""),
    ("Done / n", "num"),
    ("Submitted (UTC)", ""),
    ("Wall time", "num"),
    ("Speedup", "num"),
    ("Tokens spent", "num"),
    ("Tokens wasted", "num"),
    ("$ spent", "num"),
    ("$ wasted", "num"),
)


def run_row_html(row: RunRow, links: Links) -> str:
    """One run as a table row."""
    parent = (
        f' <a class="orch-sub" href="{esc(links.run(row.parent_run_id))}" title="parent run">'
        f"&uarr; {esc(row.parent_run_id)}</a>"
        if row.parent_run_id
        else ""
    )
    wall = duration(row.wall_s) + ("" if row.final else " so far")
    cells = [
        f'<a href="{esc(links.run(row.run_id))}"><code>{esc(row.run_id)}</code></a>{parent}',
        esc(row.pattern.value),
        badge(row.status),
        f"{row.done} / {row.n}",
        when(row.created_at),
        esc(wall),
        speed(row.speedup),
        tokens(row.tokens_spent),
        tokens(row.tokens_wasted),
        usd(row.cost_usd_spent),
        usd(row.cost_usd_wasted),
    ]
    tds = "".join(
        f'<td class="{cls}">{cell}</td>' for cell, (_, cls) in zip(cells, _COLUMNS, strict=True)
    )
    return f'<tr data-run="{esc(row.run_id)}" data-status="{esc(row.status.value)}">{tds}</tr>'


def runs_page(listing: RunList, flt: RunFilter, links: Links) -> str:
    """The body of ``/orchestrations``: filters, then the runs, newest first."""
    head = "".join(f'<th class="{cls}" scope="col">{esc(name)}</th>' for name, cls in _COLUMNS)
    rows = "".join(run_row_html(r, links) for r in listing.runs) or (
        f'<tr><td colspan="{len(_COLUMNS)}" class="empty-table-message orch-muted">'
        "No run matches.</td></tr>"
    )
    shown = (
        f"{len(listing.runs)} of {listing.matched} matching, "
        f"among the {listing.recent} most recent runs"
    )
    return (
        f'{STYLE}<div class="page-section"><header class="page-header mb-3"><div>'
        '<p class="page-eyebrow">Orchestrations</p>'
        f'<p class="page-description">{esc(shown)} &middot; '
        f'<a href="{esc(links.api)}">JSON</a></p></div></header>'
        f"{_status_pills(links, flt)}{_search_form(links, flt)}"
        '<section class="tasks-table-card"><div class="table-responsive">'
        '<table id="orchestrations" class="orch-table table table-hover align-middle mb-0">'
        f"<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div></section></div>"
    )


# -- the tree ------------------------------------------------------------------------------
def _totals_line(t: TreeTotals) -> str:
    parts = [
        f"{t.runs} run{'s' if t.runs != 1 else ''}",
        f"{t.subagents} subagents",
        f"wall {duration(t.wall_s)}",
        f"work {duration(t.work_spent_s)} (wasted {duration(t.work_wasted_s)})",
        f"tokens {tokens(t.tokens_spent)} (wasted {tokens(t.tokens_wasted)})",
    ]
    if t.cost_usd_spent is not None:
        parts.append(f"{usd(t.cost_usd_spent)} (wasted {usd(t.cost_usd_wasted)})")
    return esc(" · ".join(parts))


def _node_html(node: RunTree, links: Links, current: str) -> str:
    n = node.result.report.n if node.result else (node.progress.n if node.progress else 0)
    via = (
        f'<span class="orch-sub">from #{node.parent.index} {esc(node.parent.agent)} '
        f'(<a href="{esc(links.task(node.parent.task_id))}">task</a>)</span>'
        if node.parent
        else ""
    )
    name = f"<code>{esc(node.run_id)}</code>"
    if node.run_id != current:
        name = f'<a href="{esc(links.run(node.run_id))}">{name}</a>'
    else:
        name = f"<strong>{name}</strong>"
    kids = "".join(_node_html(child, links, current) for child in node.children)
    return (
        f'<li data-run="{esc(node.run_id)}"><span class="orch-node">{name} '
        f"{esc(node.pattern.value)} of {n} {badge(node.status)} {via}"
        f'<span class="orch-sub">{_totals_line(node.totals)}</span></span>'
        + (f"<ul>{kids}</ul>" if kids else "")
        + "</li>"
    )


def tree_html(tree: RunTree, links: Links, current: str | None = None) -> str:
    """A run and its child runs, recursively, each with its rolled-up totals; ``current``
    (default: the root) is shown in bold, the others link to their pages."""
    return f'<ul class="orch-tree">{_node_html(tree, links, current or tree.run_id)}</ul>'
