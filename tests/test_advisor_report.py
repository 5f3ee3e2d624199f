"""Drawing the ROI report: the table, the terminal timeline and the SVG, from a hand-made run."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from orchestrator import Pattern, advise
from orchestrator.cli.preflight_text import preflight_lines
from orchestrator.cli.report import (
    COLOURS,
    report_lines,
    timeline_lines,
    timeline_svg,
)
from tests.test_advisor import ENTRIES, capacity, naps, request, stats
from workers.models import (
    AgentResult,
    AgentStatus,
    ErrorInfo,
    Prediction,
    RunResult,
    RunStatus,
    Verdict,
)
from workers.run_result import roi

T0 = 1_700_000_000.0
SVG = "{http://www.w3.org/2000/svg}"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def race_result() -> RunResult:
    """A race: #0 rejected at 0.2 s, #1 wins at 0.6 s, #2 stopped, #3 never started."""

    def env(i: int, status: AgentStatus, start: float | None, end: float | None) -> AgentResult:
        return AgentResult(
            index=i,
            task_id=f"r.{i}",
            agent="nap",
            status=status,
            queued_at=T0 + 0.01,
            started_at=T0 + start if start is not None else None,
            finished_at=T0 + end if end is not None else None,
            cancel_requested_at=T0 + 0.6
            if status in (AgentStatus.CANCELLED, AgentStatus.SKIPPED)
            else None,
            error=ErrorInfo(type="Rejected", message="no")
            if status is AgentStatus.INVALID
            else None,
        )

    results = [
        env(0, AgentStatus.INVALID, 0.02, 0.2),
        env(1, AgentStatus.OK, 0.02, 0.6),
        env(2, AgentStatus.CANCELLED, 0.3, 0.65),
        env(3, AgentStatus.SKIPPED, None, 0.7),
    ]
    report = roi(results, created_at=T0, finished_at=T0 + 0.62, winner=1)
    report.prediction = Prediction(
        verdict=Verdict.PAYS,
        sequential_s=1.2,
        parallel_s=0.55,
        speedup=2.2,
        reasons=["width warn: x"],
    )
    return RunResult(
        run_id="r",
        pattern=Pattern.RACE,
        status=RunStatus.SUCCEEDED,
        results=results,
        winner=results[1],
        created_at=T0,
        finished_at=T0 + 0.62,
        report=report,
    )


def test_terminal_timeline_draws_each_phase_and_marker_where_it_happened() -> None:
    lines = timeline_lines(race_result(), width=70, colour=False)
    rows = {line.split()[0] + line.split()[1]: line for line in lines if line.startswith("#")}
    assert len(rows) == 4
    bar_start = lines[2].index("#0 nap") + len("#0 nap".ljust(12)) + 1
    scale = 69 / 0.7  # the axis runs from submit to the last event (#3 skipped at 0.7 s)

    def at(row: str, t: float) -> str:
        return rows[row][bar_start + round(t * scale)]

    assert at("#0nap", 0.1) == "█" and at("#0nap", 0.3) == " "
    assert at("#1nap", 0.4) == "█" and at("#1nap", 0.6) == "★"
    assert at("#2nap", 0.2) == "░" and at("#2nap", 0.45) == "█" and at("#2nap", 0.6) == "✕"
    assert "█" not in rows["#3nap"] and at("#3nap", 0.6) == "✕"
    assert "ok (won)" in rows["#1nap"] and "invalid" in rows["#0nap"] and "skipped" in rows["#3nap"]
    assert lines[0].rstrip().endswith("700 ms")


def test_terminal_colours_follow_the_outcome_in_few_escapes() -> None:
    lines = timeline_lines(race_result(), width=70, colour=True)
    winner = next(line for line in lines if line.startswith("#1"))
    assert f"\x1b[{COLOURS[AgentStatus.OK][0]}m" in winner
    invalid = next(line for line in lines if line.startswith("#0"))
    assert f"\x1b[{COLOURS[AgentStatus.INVALID][0]}m" in invalid
    # One escape per run of a colour, not per cell: bar, marker and status only.
    assert len(ANSI.findall(winner)) <= 10
    assert [ANSI.sub("", line) for line in lines] == timeline_lines(
        race_result(), width=70, colour=False
    )


def test_svg_is_a_well_formed_picture_of_the_run() -> None:
    svg = timeline_svg(race_result(), width=1100)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg" and root.get("width") == "1100"
    ran = [r for r in root.iter(f"{SVG}rect") if r.get("class") == "ran"]
    assert len(ran) == 3  # #3 never started
    assert [r.get("fill") for r in ran] == [
        COLOURS[AgentStatus.INVALID][1],
        COLOURS[AgentStatus.OK][1],
        COLOURS[AgentStatus.CANCELLED][1],
    ]
    x = [float(r.get("x", "0")) for r in ran]
    assert x[0] == x[1] < x[2]  # #2 started later
    widths = [float(r.get("width", "0")) for r in ran]
    assert widths[1] > widths[0] * 2  # 0.58 s against 0.18 s
    won = [t for t in root.iter(f"{SVG}text") if t.get("class") == "won"]
    assert len(won) == 1 and won[0].text == "★"
    cancel = [line for line in root.iter(f"{SVG}line") if line.get("class") == "cancel"]
    assert len(cancel) == 1
    assert float(cancel[0].get("x1", "0")) > x[1]  # asked to stop after #1 started
    title = "".join(next(root.iter(f"{SVG}text")).itertext())
    assert "run r" in title and "race-then-cancel" in title and "predicted x2.20" in title


def test_gather_draws_its_merge_row() -> None:
    res = race_result()
    res.report.merge_s = 0.05
    lines = timeline_lines(res, width=40, colour=False)
    assert any(line.startswith("merge") and "█" in line for line in lines)
    assert "merged" in timeline_svg(res)


def test_report_table_puts_actual_beside_predicted() -> None:
    lines = report_lines(race_result())
    assert lines[0].startswith("run r  race-then-cancel  succeeded  4 subagents, executed parallel")
    wall = next(line for line in lines if "wall time" in line)
    assert wall.split()[-4:] == ["620", "ms", "550", "ms"]
    speed = next(line for line in lines if line.strip().startswith("speedup"))
    assert speed.split()[-1] == "x2.20"
    assert any("pre-flight verdict: pays (policy warn)" in line for line in lines)
    assert any("width warn: x" in line for line in lines)
    assert any("winner alone" in line for line in lines)


def test_preflight_table_has_one_line_per_check() -> None:
    pf = advise(request(Pattern.SPAWN, naps(8)), ENTRIES, stats(nap=0.3), capacity())
    lines = preflight_lines(pf)
    assert lines[0].startswith("pre-flight: parallel-spawn of 8 tasks -> PAYS")
    assert "(2 waves)" in lines[1] and "agents: 4 slots" in lines[1]
    assert [line.split()[1] for line in lines[2:]] == [
        "independence",
        "structure",
        "cost",
        "width",
        "race",
    ]
    assert lines[5].split()[0] == "WARN"
