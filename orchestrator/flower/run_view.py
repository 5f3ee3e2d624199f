"""HTML of one run's page (pure functions of a :class:`RunPage`): its header and progress, its
tree, the report's timeline picture, the ROI table beside the pre-flight prediction, the winner
or the merge, and one row per subagent linked to Flower's task page."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from orchestrator.cli.report import duration, roi_rows, roi_summary, timeline_svg
from orchestrator.cli.spend import tokens, usd
from orchestrator.flower.data import RunPage
from orchestrator.flower.render import STYLE, Links, badge, esc, tree_html, when
from workers.models import AgentResult, RunProgress, RunResult
from workers.names import coordinator_id, merge_id
from workers.patterns import pattern_of

#: Longest output shown on the page (the JSON API has it whole).
MAX_OUTPUT_CHARS = 20_000


def _card(title: str, body: str, *, section_id: str) -> str:
    return (
        f'<section class="detail-card" id="{section_id}" aria-label="{esc(title)}">'
        f'<h2 class="orch-card-title">{esc(title)}</h2>{body}</section>'
    )


def _dl(rows: list[tuple[str, str]]) -> str:
    items = "".join(f'<div class="detail-row"><dt>{esc(k)}</dt><dd>{v}</dd></div>' for k, v in rows)
    return f'<dl class="detail-list">{items}</dl>'


def _json_block(value: Any) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_OUTPUT_CHARS:
        text = text[:MAX_OUTPUT_CHARS] + f"\n... ({len(text) - MAX_OUTPUT_CHARS} more characters)"
    return f'<pre class="detail-code"><code>{esc(text)}</code></pre>'


def _task_link(links: Links, task_id: str) -> str:
    return f'<a href="{esc(links.task(task_id))}"><code>{esc(task_id)}</code></a>'


def header_html(page: RunPage, links: Links) -> str:
    """Run id, pattern, status, and links to its Flower tasks, its parent and its JSON."""
    tree = page.tree
    head = page.result or page.progress
    assert head is not None
    rows = [
        ("Run", f"<code>{esc(page.run_id)}</code>"),
        ("Pattern", esc(head.pattern.value)),
        ("Status", badge(head.status) + ("" if page.final else " (refreshing)")),
        ("Submitted", when(head.created_at)),
        ("Coordinator task", _task_link(links, coordinator_id(page.run_id))),
    ]
    if page.result is not None:
        rows.append(("Finished", when(page.result.finished_at)))
        r = page.result.report
        if r.merge_s or r.merge_wait_s or page.result.merged is not None:
            rows.append(("Merger task", _task_link(links, merge_id(page.run_id))))
        if page.result.error:
            rows.append(("Note", esc(page.result.error)))
    if tree.parent is not None:
        p = tree.parent
        rows.append(
            (
                "Started by",
                f'<a href="{esc(links.run(p.run_id))}"><code>{esc(p.run_id)}</code></a> '
                f"subagent #{p.index} {esc(p.agent)} ({_task_link(links, p.task_id)})",
            )
        )
    rows.append(("JSON", f'<a href="{esc(links.api)}">{esc(links.api)}</a>'))
    return f'<section class="detail-card task-details-card">{_dl(rows)}</section>'


def progress_html(progress: RunProgress) -> str:
    """Where a going run stands: reported of n, started, outcomes so far, spend so far."""
    counts = ", ".join(f"{esc(k)} {v}" for k, v in sorted(progress.counts.items())) or "none yet"
    unit = esc(pattern_of(progress.pattern).progress_unit)
    cards = [
        ("Reported", f"{progress.finished} / {progress.n}", "metric-card-active"),
        ("Started", str(progress.started), ""),
        ("Tokens so far", tokens(progress.tokens_spent), ""),
        ("Dollars so far", usd(progress.cost_usd_spent), ""),
    ]
    grid = "".join(
        f'<div class="metric-card {cls}"><p class="metric-label">{esc(label)}</p>'
        f'<p class="metric-value">{esc(value)}</p></div>'
        for label, value, cls in cards
    )
    return (
        f'<div class="metric-grid">{grid}</div>'
        f'<p class="orch-muted">Outcomes of the {unit} so far: {counts}; deadline '
        f"{when(progress.deadline_at)}.</p>"
    )


def roi_html(result: RunResult) -> str:
    """The ROI table, actual beside predicted, with the pre-flight verdict and its reasons."""
    body = "".join(
        f'<tr><th scope="row">{esc(name.strip())}</th><td class="num">{esc(actual)}</td>'
        f'<td class="num">{esc(pred)}</td></tr>'
        for name, actual, pred in roi_rows(result)
    )
    p = result.report.prediction
    if p is None:
        verdict = "Pre-flight: off (no prediction recorded)."
    else:
        verdict = f"Pre-flight verdict: {p.verdict.value} (policy {p.policy})."
    reasons = "".join(f"<li>{esc(reason)}</li>" for reason in (p.reasons if p else []))
    note = pattern_of(result.pattern).report_note
    return (
        '<div class="table-responsive"><table class="orch-table table table-sm mb-0">'
        '<thead><tr><th scope="col"></th><th class="num" scope="col">actual</th>'
        f'<th class="num" scope="col">predicted</th></tr></thead><tbody>{body}</tbody>'
        f'</table></div><div class="orch-card-body"><p class="mb-1">{esc(verdict)} '
        f"{esc(roi_summary(result.report))}.</p>"
        + (f'<ul class="mb-1">{reasons}</ul>' if reasons else "")
        + (f'<p class="orch-muted mb-0">{esc(note)}</p>' if note else "")
        + "</div>"
    )


def outcome_html(result: RunResult, links: Links) -> str:
    """The race's winner, the gather's merge, or the outputs kept, as JSON."""
    if result.winner is not None:
        w = result.winner
        head = f"Winner: #{w.index} {esc(w.agent)} ({_task_link(links, w.task_id)})"
        return f'<div class="orch-card-body"><p>{head}</p>{_json_block(w.output)}</div>'
    if result.merged is not None:
        return f'<div class="orch-card-body"><p>Merged output</p>{_json_block(result.merged)}</div>'
    why = esc(result.error or "no winner and no merge")
    return f'<div class="orch-card-body"><p class="orch-muted mb-0">{why}</p></div>'


_ENV_COLUMNS = (
    ("#", "num"),
    ("Task", ""),
    ("Agent", ""),
    ("Status", ""),
    ("Worker", ""),
    ("Queued", ""),
    ("Started", ""),
    ("Finished", ""),
    ("Ran", "num"),
    ("Attempt", "num"),
    ("Tokens", "num"),
    ("$", "num"),
    ("Throttled", "num"),
    ("Retries", "num"),
    ("Error", "wrap"),
)


def _clock(ts: float | None) -> str:
    """Time of day to the millisecond (UTC): a run's subagents are apart by milliseconds."""
    if ts is None:
        return '<span class="orch-muted">-</span>'
    at = datetime.fromtimestamp(ts, UTC)
    return f'<time title="{at.isoformat()}">{at.strftime("%H:%M:%S.%f")[:-3]}</time>'


def envelope_row(env: AgentResult, links: Links, *, won: bool = False) -> str:
    """One subagent's envelope as a table row (its output is in the JSON, not here)."""
    u = env.usage
    error = f"{esc(env.error.type)}: {esc(env.error.message)}" if env.error else ""
    cells = [
        str(env.index),
        _task_link(links, env.task_id),
        esc(env.agent),
        badge(env.status) + (" &#9733;" if won else ""),
        esc(env.worker or "-"),
        _clock(env.queued_at),
        _clock(env.started_at),
        _clock(env.finished_at),
        esc(duration(env.ran_s) if env.started_at else "-"),
        str(env.attempt),
        tokens(u.input_tokens + u.output_tokens) if u else "-",
        usd(u.cost_usd) if u else "-",
        esc(duration(env.throttled_s)) if env.throttled_s else "-",
        str(env.retries),
        error,
    ]
    tds = "".join(
        f'<td class="{cls}">{cell}</td>' for cell, (_, cls) in zip(cells, _ENV_COLUMNS, strict=True)
    )
    return f'<tr data-task="{esc(env.task_id)}" data-status="{esc(env.status.value)}">{tds}</tr>'


def envelopes_html(envs: list[AgentResult], links: Links, winner: int | None) -> str:
    """Every subagent's envelope, in task order."""
    head = "".join(f'<th class="{cls}" scope="col">{esc(n)}</th>' for n, cls in _ENV_COLUMNS)
    rows = "".join(envelope_row(e, links, won=e.index == winner) for e in envs) or (
        f'<tr><td colspan="{len(_ENV_COLUMNS)}" class="orch-muted">No subagent has reported '
        "yet.</td></tr>"
    )
    return (
        '<div class="table-responsive"><table id="subagents" class="orch-table table '
        f'table-sm table-hover align-middle mb-0"><thead><tr>{head}</tr></thead>'
        f"<tbody>{rows}</tbody></table></div>"
    )


def run_page_html(page: RunPage, links: Links) -> str:
    """The body of ``/orchestrations/<run_id>``."""
    parts = [
        STYLE,
        '<div class="page-section detail-page" style="width: min(100%, 110rem)">',
        '<header class="detail-page-header"><p class="page-eyebrow">Orchestration</p>'
        f'<div class="detail-actions"><a class="btn btn-sm btn-outline-secondary" '
        f'href="{esc(links.runs)}">All orchestrations</a></div></header>',
        header_html(page, links),
    ]
    if page.progress is not None:
        parts.append(progress_html(page.progress))
    parts.append(_card("Tree", tree_html(page.tree, links, page.run_id), section_id="tree"))
    result = page.result
    if result is not None:
        picture = f'<div class="orch-timeline orch-card-body">{timeline_svg(result)}</div>'
        parts.append(_card("Timeline", picture, section_id="timeline"))
        parts.append(_card("Return on parallelism", roi_html(result), section_id="roi"))
        parts.append(_card("Outcome", outcome_html(result, links), section_id="outcome"))
    envs = result.results if result is not None else page.envelopes
    winner = result.winner.index if result is not None and result.winner else None
    if result is None and page.progress is not None:
        winner = page.progress.winner
    n = result.report.n if result is not None else (page.progress.n if page.progress else 0)
    title = f"Subagents ({len(envs)} of {n} reported)"
    parts.append(_card(title, envelopes_html(envs, links, winner), section_id="subagents"))
    parts.append("</div>")
    return "".join(parts)


#: Reloads a going run's page (and the list while a run in it is going).
REFRESH_SCRIPT = "<script>setTimeout(function () { window.location.reload(); }, {ms});</script>"


def refresh_script(refresh_s: float) -> str:
    """The script that reloads the page after ``refresh_s``."""
    return REFRESH_SCRIPT.replace("{ms}", str(int(refresh_s * 1000)))
