"""HTML of one run's page (pure functions of a :class:`RunPage`): its header and progress, its
tree, the report's timeline picture, the ROI table beside the pre-flight prediction, the winner
or the merge, and one row per subagent linked to Flower's task page."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from orchestrator.cli.report import duration, roi_rows, roi_summary, timeline_svg
from orchestrator.cli.spend import tokens, usd
from orchestrator.flower.data import SECRET_SHOWN, RunPage
from orchestrator.flower.render import STYLE, Links, badge, esc, speed, tree_html, when
from workers.models import AgentResult, AgentStatus, RunResult
from workers.names import coordinator_id, merge_id
from workers.patterns import pattern_of

#: Longest output shown on the page (the JSON API has it whole).
MAX_OUTPUT_CHARS = 20_000
#: Most outputs the page shows of a run with neither a winner nor a merge.
MAX_OUTPUTS = 10


def _card(title: str, body: str, *, section_id: str) -> str:
    return (
        f'<section class="detail-card" id="{section_id}" aria-label="{esc(title)}">'
        f'<h2 class="orch-card-title">{esc(title)}</h2>{body}</section>'
    )


def _dl(rows: list[tuple[str, str]]) -> str:
    items = "".join(f'<div class="detail-row"><dt>{esc(k)}</dt><dd>{v}</dd></div>' for k, v in rows)
    return f'<dl class="detail-list">{items}</dl>'


def _json_block(value: Any) -> str:
    if value == SECRET_SHOWN:
        return '<p class="orch-muted mb-0">Not shown: it may hold a secret subagent\'s output.</p>'
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    if len(text) > MAX_OUTPUT_CHARS:
        text = text[:MAX_OUTPUT_CHARS] + f"\n... ({len(text) - MAX_OUTPUT_CHARS} more characters)"
    return f'<pre class="detail-code"><code>{esc(text)}</code></pre>'


def _task_link(links: Links, task_id: str) -> str:
    return f'<a href="{esc(links.task(task_id))}"><code>{esc(task_id)}</code></a>'


def _button(href: str, label: str) -> str:
    return f'<a class="btn btn-sm btn-outline-secondary" href="{esc(href)}">{esc(label)}</a>'


def header_html(page: RunPage, links: Links) -> str:
    """The run's id, pattern and status, with buttons to its Flower tasks and its JSON."""
    head = page.result or page.progress
    assert head is not None
    buttons = [_button(links.task(coordinator_id(page.run_id)), "Coordinator task")]
    if page.result is not None:
        r = page.result.report
        if r.merge_s or r.merge_wait_s or page.result.merged is not None:
            buttons.append(_button(links.task(merge_id(page.run_id)), "Merger task"))
    buttons += [_button(links.api, "JSON"), _button(links.runs, "All orchestrations")]
    going = "" if page.final else ' <span class="orch-muted fs-6">(refreshing)</span>'
    return (
        '<header class="detail-page-header"><div><p class="page-eyebrow">Orchestration</p>'
        f'<h1 class="h4 mb-0"><code class="text-body-secondary">{esc(page.run_id)}</code> '
        f"{esc(head.pattern.value)} "
        f"{badge(head.status)}{going}</h1></div>"
        f'<div class="detail-actions">{"".join(buttons)}</div></header>'
    )


def _metrics(cards: list[tuple[str, str, str]]) -> str:
    return (
        '<div class="metric-grid">'
        + "".join(
            f'<div class="metric-card"><p class="metric-label">{esc(label)}</p>'
            f'<p class="metric-value">{esc(value)}</p>'
            f'<p class="orch-muted mb-0 small">{esc(sub)}</p></div>'
            for label, value, sub in cards
        )
        + "</div>"
    )


def metrics_html(page: RunPage) -> str:
    """Four figures at a glance: reported of n, wall time, speedup, spend (and waste)."""
    if page.result is None:
        prog = page.progress
        assert prog is not None
        unit = pattern_of(prog.pattern).progress_unit
        counts = ", ".join(f"{k} {v}" for k, v in sorted(prog.counts.items())) or "none yet"
        return _metrics(
            [
                ("Reported", f"{prog.finished} / {prog.n}", f"{unit}: {counts}"),
                ("Started", str(prog.started), f"of {prog.n} {unit}"),
                ("Tokens so far", tokens(prog.tokens_spent), f"dollars {usd(prog.cost_usd_spent)}"),
                ("Budget", tokens(prog.max_tokens), f"dollars {usd(prog.max_cost_usd)}"),
            ]
        )
    r, p = page.result.report, page.result.report.prediction
    done = sum(1 for e in page.result.results if e.finished_at is not None)
    return _metrics(
        [
            ("Reported", f"{done} / {r.n}", f"executed {r.execution.value}"),
            ("Wall time", duration(r.wall_s), f"predicted {duration(p.parallel_s if p else None)}"),
            ("Speedup", speed(r.speedup), f"predicted {speed(p.speedup if p else None)}"),
            (
                "Tokens spent",
                tokens(r.tokens_spent),
                f"{usd(r.cost_usd_spent)}; wasted {tokens(r.tokens_wasted)}, "
                f"{usd(r.cost_usd_wasted)}"
                if r.tokens_spent
                else "no model usage recorded",
            ),
        ]
    )


def details_html(page: RunPage, links: Links) -> str:
    """When it was submitted and finished, what started it, and why it ended as it did."""
    head = page.result or page.progress
    assert head is not None
    rows = [("Submitted", when(head.created_at))]
    if page.result is not None:
        rows.append(("Finished", when(page.result.finished_at)))
        if page.result.error:
            rows.append(("Note", esc(page.result.error)))
    if page.progress is not None:
        rows.append(("Deadline", when(page.progress.deadline_at)))
    if page.tree.parent is not None:
        p = page.tree.parent
        rows.append(
            (
                "Started by",
                f'<a href="{esc(links.run(p.run_id))}"><code>{esc(p.run_id)}</code></a> '
                f"subagent #{p.index} {esc(p.agent)} ({_task_link(links, p.task_id)})",
            )
        )
    return f'<section class="detail-card task-details-card">{_dl(rows)}</section>'


def timeline_html(result: RunResult) -> str:
    """The report's timeline picture, inline. Its row groups are renamed: Bootstrap's ``.row``
    (a flex grid whose children get ``width: 100%``) would stretch every bar to the edge."""
    return timeline_svg(result).replace('<g class="row">', '<g class="timeline-row">')


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
    """The race's winner, the gather's merge, or else the outputs of the subagents that
    succeeded (the first few; the JSON API has them all)."""
    if result.winner is not None:
        w = result.winner
        head = f"Winner: #{w.index} {esc(w.agent)} ({_task_link(links, w.task_id)})"
        return f'<div class="orch-card-body"><p>{head}</p>{_json_block(w.output)}</div>'
    if result.merged is not None:
        return f'<div class="orch-card-body"><p>Merged output</p>{_json_block(result.merged)}</div>'
    kept = [e for e in result.results if e.status is AgentStatus.OK]
    parts = [
        f'<p class="mb-1">#{e.index} {esc(e.agent)} ({_task_link(links, e.task_id)})</p>'
        + _json_block(e.output)
        for e in kept[:MAX_OUTPUTS]
    ]
    if len(kept) > MAX_OUTPUTS:
        parts.append(f'<p class="orch-muted">... and {len(kept) - MAX_OUTPUTS} more.</p>')
    if result.error:
        parts.insert(0, f'<p class="orch-muted">{esc(result.error)}</p>')
    body = "".join(parts) or '<p class="orch-muted mb-0">No output was kept.</p>'
    return f'<div class="orch-card-body orch-outputs">{body}</div>'


_ENV_COLUMNS = (
    ("#", "num"),
    ("Task", ""),
    ("Agent", ""),
    ("Status", ""),
    ("Worker", ""),
    ("Queued (UTC)", ""),
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
        '<div class="page-section detail-page orch-run">',
        header_html(page, links),
        metrics_html(page),
        details_html(page, links),
        _card("Tree", tree_html(page.tree, links, page.run_id), section_id="tree"),
    ]
    result = page.result
    if result is not None:
        picture = f'<div class="orch-timeline orch-card-body">{timeline_html(result)}</div>'
        parts.append(_card("Timeline", picture, section_id="timeline"))
        roi = _card("Return on parallelism", roi_html(result), section_id="roi")
        outcome = _card("Outcome", outcome_html(result, links), section_id="outcome")
        parts.append(
            f'<div class="row g-3"><div class="col-xl-6">{roi}</div>'
            f'<div class="col-xl-6">{outcome}</div></div>'
        )
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
