"""What parallelism bought, in numbers and in a picture: the ROI table, the pre-flight table and
the run's timeline, drawn in the terminal (ANSI colours, Unicode blocks) and as a hand-written
SVG file. Pure functions of a RunResult / Preflight: no I/O here."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from xml.sax.saxutils import escape

from orchestrator.cli.limits import envelope_limits, limit_rows
from orchestrator.cli.spend import spend_clause, spend_rows, tokens_of, unpriced_note
from workers.models import AgentResult, AgentStatus, RoiReport, RunResult
from workers.patterns import pattern_of

#: Outcome -> (ANSI colour code, SVG colour).
COLOURS: dict[AgentStatus, tuple[str, str]] = {
    AgentStatus.OK: ("32", "#2da44e"),
    AgentStatus.ERROR: ("31", "#cf222e"),
    AgentStatus.INVALID: ("35", "#8250df"),
    AgentStatus.CANCELLED: ("33", "#d4a72c"),
    AgentStatus.LOST: ("90", "#6e7781"),
    AgentStatus.SKIPPED: ("90", "#afb8c1"),
}
MERGE_COLOUR = ("36", "#0969da")
QUEUED_SVG = "#d0d7de"
WON, CANCEL, QUEUED, RUNNING, SKIP = "★", "✕", "░", "█", "·"


def duration(seconds: float | None) -> str:
    """A duration as every ROI reader prints it (watch, report, demo): ms below 10 s."""
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if abs(seconds) < 10 else f"{seconds:.2f} s"


_ms = duration


def axis_unit(span_s: float) -> tuple[str, float]:
    """(unit, seconds per unit) for a whole time axis: one unit on every tick, chosen by the
    axis's span (ms below 2 s, else s)."""
    return ("ms", 0.001) if span_s < 2 else ("s", 1.0)


def axis_label(t_s: float, unit: tuple[str, float], step_s: float) -> str:
    """A tick at ``t_s`` in the axis's unit, with as many decimals as the tick step needs."""
    name, per = unit
    step = step_s / per
    decimals = max(0, -math.floor(math.log10(step) + 1e-9)) if step > 0 else 0
    return f"{t_s / per:.{decimals}f} {name}"


def x_of(value: float | None) -> str:
    """A speedup as shown (``x1.50``; ``-`` when unknown)."""
    return "-" if value is None else f"x{value:.2f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def roi_summary(r: RoiReport) -> str:
    """The ROI in one line, as ``watch`` and the demo end with it (the table has the rest)."""
    speed = f"speedup {x_of(r.speedup)}"
    if r.speedup_vs_winner is not None:
        speed += f" ({x_of(r.speedup_vs_winner)} vs the winner alone)"
    text = f"{speed}; work spent {duration(r.work_spent_s)}, wasted {duration(r.work_wasted_s)}"
    if r.merge_s or r.merge_wait_s:
        text += f"; merge {duration(r.merge_s)} after {duration(r.merge_wait_s)} queued"
    if r.throttled_s or r.retries:
        text += f"; throttled {duration(r.throttled_s)}, {r.retries} retries"
    return text + spend_clause(r)


# -- tables -------------------------------------------------------------------------------
def roi_rows(result: RunResult) -> list[tuple[str, str, str]]:
    """(figure, actual, predicted) rows of the ROI table (the terminal's and Flower's)."""
    r, p = result.report, result.report.prediction
    pred_eff = p.speedup / r.n if p and p.speedup is not None and r.n else None
    rows: list[tuple[str, str, str]] = [
        ("wall time", _ms(r.wall_s), _ms(p.parallel_s if p else None)),
        ("sequential estimate", _ms(r.sequential_estimate_s), _ms(p.sequential_s if p else None)),
        ("speedup", x_of(r.speedup), x_of(p.speedup if p else None)),
    ]
    if r.speedup_vs_winner is not None:
        rows.append(("speedup vs winner alone", x_of(r.speedup_vs_winner), ""))
    rows += [
        ("efficiency", _pct(r.efficiency), _pct(pred_eff)),
        ("work spent", _ms(r.work_spent_s), _ms(p.cost_s if p else None)),
        ("work wasted", _ms(r.work_wasted_s), ""),
    ]
    if r.merge_s or r.merge_wait_s:
        rows += [("merge", _ms(r.merge_s), ""), ("merge queue wait", _ms(r.merge_wait_s), "")]
    rows.append(("coordinator overhead", _ms(r.coordinator_overhead_s), ""))
    rows += [("mean queue wait", _ms(r.queue_wait_s), ""), *limit_rows(r), *spend_rows(r, p)]
    if r.cancel_latency_max_s is not None:
        latency = f"{_ms(r.cancel_latency_p50_s)} / {_ms(r.cancel_latency_max_s)}"
        rows.append(("cancel latency p50/max", latency, ""))
    return rows


def report_lines(result: RunResult) -> list[str]:
    """The ROI report as a table: actual values beside the pre-flight prediction."""
    r, p, rows = result.report, result.report.prediction, roi_rows(result)
    lines = [
        f"run {result.run_id}  {result.pattern.value}  {result.status.value}  "
        f"{r.n} subagents, executed {r.execution.value}",
        f"  {'':<24}{'actual':>14}  {'predicted':>12}",
    ]
    lines += [f"  {name:<24}{actual:>14}  {pred:>12}".rstrip() for name, actual, pred in rows]
    if r.execution.value == "sequential":
        lines.append(
            "  (run sequentially by preflight='auto': compare its wall time with the predicted "
            f"sequential time, {_ms(p.sequential_s if p else None)} of work plus one dispatch "
            "per task)"
        )
    if p is None:
        lines.append("  pre-flight: off (no prediction recorded)")
    else:
        lines.append(f"  pre-flight verdict: {p.verdict.value} (policy {p.policy})")
        lines += [f"    {reason}" for reason in p.reasons]
    note = pattern_of(result.pattern).report_note
    if note:
        lines.append(f"  {note}")
    if (unpriced := unpriced_note(r)) is not None:
        lines.append(f"  {unpriced}")
    if result.error:
        lines.append(f"  note: {result.error}")
    return lines


# -- the timeline ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Row:
    label: str
    status: str
    colour: tuple[str, str]
    queued: float | None
    started: float | None
    finished: float | None
    won: bool = False
    cancel_at: float | None = None
    detail: str = ""


def _rows(result: RunResult) -> list[_Row]:
    winner = result.winner.index if result.winner else None
    rows = [_agent_row(env, env.index == winner) for env in result.results]
    r = result.report
    if r.merge_s > 0 or r.merge_wait_s > 0:
        # The merger waited in its queue from every member reported until it started, then ran
        # until the run ended: two phases, drawn like a subagent's queued and running ones.
        started = result.finished_at - r.merge_s
        rows.append(
            _Row(
                label="merge",
                status="merged" if result.merged is not None else "not merged",
                colour=MERGE_COLOUR,
                queued=started - r.merge_wait_s,
                started=started if r.merge_s > 0 else None,
                finished=result.finished_at,
                detail=f"{_ms(r.merge_s)} after {_ms(r.merge_wait_s)} queued",
            )
        )
    return rows


def _agent_row(env: AgentResult, won: bool) -> _Row:
    return _Row(
        label=f"#{env.index} {env.agent}",
        status=env.status.value + (" (won)" if won else ""),
        colour=COLOURS[env.status],
        queued=env.queued_at,
        started=env.started_at,
        finished=env.finished_at,
        won=won,
        cancel_at=env.cancel_requested_at,
        detail=(_ms(env.ran_s) if env.started_at else "") + tokens_of(env) + envelope_limits(env),
    )


def _span(result: RunResult, rows: list[_Row]) -> tuple[float, float]:
    t0 = result.created_at
    ends = [t for r in rows for t in (r.finished, r.started, r.cancel_at) if t is not None]
    t1 = max([result.finished_at, *ends])
    return t0, max(t1, t0 + 1e-3)


def _cancel_moment(result: RunResult) -> float | None:
    asked = [r.cancel_requested_at for r in result.results if r.cancel_requested_at is not None]
    return min(asked) if asked else None


def timeline_lines(result: RunResult, *, width: int = 60, colour: bool = True) -> list[str]:
    """One bar per subagent from queued (░) to started to finished (█, coloured by outcome);
    ★ marks the race winner's finish and ✕ the moment each subagent was asked to stop."""
    rows = _rows(result)
    t0, t1 = _span(result, rows)
    scale = (width - 1) / (t1 - t0)

    def col(t: float) -> int:
        return max(0, min(width - 1, round((t - t0) * scale)))

    def paint(text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if colour else text

    label_w = max(12, *(len(r.label) for r in rows))
    unit = axis_unit(t1 - t0)
    end = axis_label(t1 - t0, unit, 0.01)  # ms whole, s to the hundredth
    axis = f"0{' ' * (width - len(end) - 1)}{end}"
    lines = [
        f"{'':<{label_w}} {axis}",
        f"{'':<{label_w}} {'─' * width}",
    ]
    for row in rows:
        cells = [" "] * width
        codes: list[str | None] = [None] * width
        start = row.started if row.started is not None else row.finished
        if row.queued is not None and start is not None:
            for i in range(col(row.queued), col(start)):
                cells[i], codes[i] = QUEUED, "2"
        if row.started is not None and row.finished is not None:
            for i in range(col(row.started), max(col(row.started) + 1, col(row.finished))):
                cells[i], codes[i] = RUNNING, row.colour[0]
        elif row.finished is not None:
            cells[col(row.finished)], codes[col(row.finished)] = SKIP, row.colour[0]
        if row.cancel_at is not None:
            cells[col(row.cancel_at)], codes[col(row.cancel_at)] = CANCEL, "1;31"
        if row.won and row.finished is not None:
            cells[col(row.finished)], codes[col(row.finished)] = WON, "1;32"
        bar = _ansi(cells, codes) if colour else "".join(cells)
        status = paint(f"{row.status:<16}", row.colour[0])
        lines.append(f"{row.label:<{label_w}} {bar} {status}{row.detail}")
    lines.append(
        f"{'':<{label_w}} {QUEUED} queued  {RUNNING} running (green ok, red error, magenta "
        f"invalid, yellow cancelled, grey skipped/lost)  {WON} won  {CANCEL} asked to stop"
    )
    return lines


def _ansi(cells: list[str], codes: list[str | None]) -> str:
    """Cells with one escape sequence per run of equal colour (not one per cell)."""
    out: list[str] = []
    current: str | None = None
    for cell, code in zip(cells, codes, strict=True):
        if code != current:
            if current is not None:
                out.append("\x1b[0m")
            if code is not None:
                out.append(f"\x1b[{code}m")
            current = code
        out.append(cell)
    if current is not None:
        out.append("\x1b[0m")
    return "".join(out)


def _ticks(span: float) -> tuple[list[float], float]:
    """About eight round ticks over the span, and their step."""
    raw = span / 8
    magnitude = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(span / step) + 1)], step


def timeline_svg(result: RunResult, *, width: int = 1100) -> str:
    """The timeline as a standalone SVG document (open it in any browser)."""
    rows = _rows(result)
    t0, t1 = _span(result, rows)
    left, right, top, row_h = 180, 150, 64, 24
    plot_w = width - left - right
    height = top + row_h * len(rows) + 56

    def x(t: float) -> float:
        return left + (t - t0) / (t1 - t0) * plot_w

    r = result.report
    pred = r.prediction
    title = (
        f"run {result.run_id} · {result.pattern.value} · {result.status.value} · wall "
        f"{_ms(r.wall_s)} · speedup {x_of(r.speedup)}"
        + (f" (predicted {x_of(pred.speedup)}, {pred.verdict.value})" if pred else "")
        + f" · {r.execution.value}"
    )
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="12" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]
    axis_y = top - 14
    out.append(
        f'<line x1="{left}" y1="{axis_y}" x2="{left + plot_w}" y2="{axis_y}" stroke="#57606a"/>'
    )
    ticks, step = _ticks(t1 - t0)
    unit = axis_unit(t1 - t0)
    for tick in ticks:
        tx = x(t0 + tick)
        out.append(
            f'<line x1="{tx:.1f}" y1="{axis_y - 4}" x2="{tx:.1f}" y2="{axis_y}" stroke="#57606a"/>'
        )
        out.append(
            f'<line x1="{tx:.1f}" y1="{axis_y}" x2="{tx:.1f}" y2="{top + row_h * len(rows)}" '
            'stroke="#eaeef2"/>'
        )
        out.append(
            f'<text x="{tx:.1f}" y="{axis_y - 8}" text-anchor="middle">'
            f"{axis_label(tick, unit, step)}</text>"
        )
    for i, row in enumerate(rows):
        out += _svg_row(row, top + i * row_h, row_h, x, left + plot_w)
    cancel = _cancel_moment(result)
    bottom = top + row_h * len(rows)
    if cancel is not None:
        cx = x(cancel)
        out.append(
            f'<line class="cancel" x1="{cx:.1f}" y1="{top - 6}" x2="{cx:.1f}" y2="{bottom}" '
            'stroke="#cf222e" stroke-dasharray="4 3"/>'
        )
        out.append(f'<text x="{cx + 3:.1f}" y="{bottom + 14}" fill="#cf222e">cancel asked</text>')
    out.append(_svg_legend(bottom + 36))
    out.append("</svg>")
    return "\n".join(out) + "\n"


def _svg_row(
    row: _Row, y: float, h: float, x: Callable[[float], float], status_x: float
) -> list[str]:
    mid = y + h / 2
    tip = escape(
        f"{row.label}: {row.status}"
        + (f", ran {row.detail}" if row.detail else "")
        + (f", queued {_ms(row.started - row.queued)}" if row.started and row.queued else "")
    )
    out = [f'<g class="row"><title>{tip}</title>']
    out.append(f'<text x="8" y="{mid + 4:.1f}">{escape(row.label)}</text>')
    start = row.started if row.started is not None else row.finished
    if row.queued is not None and start is not None:
        qx = x(row.queued)
        out.append(
            f'<rect class="queued" x="{qx:.1f}" y="{mid - 3:.1f}" '
            f'width="{max(0.0, x(start) - qx):.1f}" height="6" fill="{QUEUED_SVG}"/>'
        )
    if row.started is not None and row.finished is not None:
        sx = x(row.started)
        out.append(
            f'<rect class="ran" x="{sx:.1f}" y="{mid - 7:.1f}" '
            f'width="{max(1.5, x(row.finished) - sx):.1f}" height="14" rx="2" '
            f'fill="{row.colour[1]}"/>'
        )
    elif row.finished is not None:
        out.append(
            f'<circle cx="{x(row.finished):.1f}" cy="{mid:.1f}" r="3" fill="{row.colour[1]}"/>'
        )
    if row.cancel_at is not None:
        cx = x(row.cancel_at)
        out.append(
            f'<path class="cancel-mark" d="M{cx - 4:.1f},{mid - 4:.1f} l8,8 m0,-8 l-8,8" '
            'stroke="#cf222e" stroke-width="2"/>'
        )
    if row.won and row.finished is not None:
        out.append(
            f'<text class="won" x="{x(row.finished) + 4:.1f}" y="{mid + 5:.1f}" font-size="16" '
            f'fill="#1a7f37">{WON}</text>'
        )
    out.append(
        f'<text x="{status_x + 12:.1f}" y="{mid + 4:.1f}" fill="{row.colour[1]}">'
        f"{escape(row.status)} {escape(row.detail)}</text>"
    )
    out.append("</g>")
    return out


def _svg_legend(y: float) -> str:
    items = [("queued", QUEUED_SVG), *((s.value, c[1]) for s, c in COLOURS.items())]
    items.append(("merge", MERGE_COLOUR[1]))
    parts = []
    for i, (name, colour) in enumerate(items):
        lx = 12 + i * 100
        parts.append(f'<rect x="{lx}" y="{y - 10}" width="14" height="10" fill="{colour}"/>')
        parts.append(f'<text x="{lx + 18}" y="{y}">{escape(name)}</text>')
    lx = 12 + len(items) * 100
    parts.append(f'<text x="{lx}" y="{y}" fill="#1a7f37">{WON} won</text>')
    parts.append(f'<text x="{lx + 60}" y="{y}" fill="#cf222e">{CANCEL} asked to stop</text>')
    return '<g class="legend">' + "".join(parts) + "</g>"
