"""One set of numbers: `watch`, `report`, `Run.report()` and the demo print the same ROI of a run,
computed in one place (workers/run_result.py); a race's speedup is against trying its racers in
order; a gather's merger's queue wait is its own figure and its own phase in the picture; one
unit per timeline axis."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
from click.testing import CliRunner

from orchestrator import EmbeddedStack, Orchestrator, Pattern, Task
from orchestrator.api.runs import Run
from orchestrator.cli import main
from orchestrator.cli.demo import roi_lines
from orchestrator.cli.report import report_lines, timeline_lines, timeline_svg
from tests.conftest import wait_for
from workers.models import AgentResult, AgentStatus, RoiReport, RunResult, RunStatus
from workers.run_result import roi

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_000.0

#: A printed number: a duration ('1234 ms', '12.35 s'), a factor ('x1.23').
NUMBER = r"(x\d+\.\d+|\d+(?:\.\d+)? ?m?s)"


def value(text: str) -> tuple[float, float]:
    """(value, half a unit of its last printed digit): seconds for durations."""
    text = text.replace(" ", "")
    if text.startswith("x"):
        digits, scale = text[1:], 1.0
    elif text.endswith("ms"):
        digits, scale = text[:-2], 0.001
    else:
        digits, scale = text[:-1], 1.0
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return float(digits) * scale, 0.5 * 10**-decimals * scale + 1e-12


def figure(text: str, pattern: str) -> tuple[float, float]:
    found = re.search(pattern, text, re.M)
    assert found, f"{pattern!r} not in:\n{text}"
    return value(found.group(1))


#: (RoiReport field, how watch's result line says it, the report table's row, the demo's lines).
FIGURES = [
    ("wall_s", rf" in {NUMBER};", rf"^  wall time\s+{NUMBER}", rf"; wall {NUMBER};"),
    (
        "sequential_estimate_s",
        None,
        rf"^  sequential estimate\s+{NUMBER}",
        rf"sequential estimate {NUMBER};",
    ),
    ("speedup", rf"speedup {NUMBER}", rf"^  speedup\s+{NUMBER}", rf"speedup {NUMBER}"),
    ("work_spent_s", rf"work spent {NUMBER}", rf"^  work spent\s+{NUMBER}", rf"spent {NUMBER}"),
    ("work_wasted_s", rf"wasted {NUMBER}", rf"^  work wasted\s+{NUMBER}", rf"wasted {NUMBER}"),
]
RACE_FIGURES = [
    (
        "speedup_vs_winner",
        rf"{NUMBER} vs the winner alone",
        rf"^  speedup vs winner alone\s+{NUMBER}",
        rf"{NUMBER} vs the winner alone",
    )
]
GATHER_FIGURES = [
    ("merge_s", rf"merge {NUMBER} after", rf"^  merge\s+{NUMBER}", rf"merge {NUMBER} after"),
    (
        "merge_wait_s",
        rf"after {NUMBER} queued",
        rf"^  merge queue wait\s+{NUMBER}",
        rf"after {NUMBER} queued",
    ),
]


@pytest.fixture
def cli_env(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("ORCH_BROKER_URL", stack.url)
    monkeypatch.setenv("ORCH_KEY_PREFIX", stack.key_prefix)
    return CliRunner()


def side_by_side(
    runner: CliRunner, run: Run, figures: list[tuple[str, str | None, str, str]]
) -> RunResult:
    """Watch the run from its start (as an operator would), then report it, ask Run.report()
    and draw the demo's lines: every figure agrees to the precision it is printed with."""
    watched = runner.invoke(main, ["watch", run.id])
    assert watched.exit_code == 0, watched.output
    [watch_text] = [line for line in watched.output.splitlines() if line.startswith("result:")]
    assert watch_text.startswith("result: succeeded"), watched.output
    reported = runner.invoke(main, ["report", run.id, "--no-svg", "--no-color"])
    assert reported.exit_code == 0, reported.output
    report = run.report()
    settled = run.settle(timeout_s=10)
    demo = "\n".join(roi_lines(settled))
    assert settled.report.model_dump() == report.model_dump()
    for field, in_watch, in_report, in_demo in figures:
        truth = getattr(report, field)
        shown = [("report", figure(reported.output, in_report)), ("demo", figure(demo, in_demo))]
        if in_watch is not None:
            shown.append(("watch", figure(watch_text, in_watch)))
        for reader, (number, half_digit) in shown:
            assert abs(number - truth) <= half_digit, (field, reader, number, truth, watch_text)
    return settled


def test_a_race_reads_the_same_everywhere_and_pays_against_trying_racers_in_order(
    orch: Orchestrator, cli_env: CliRunner
) -> None:
    # #0 fails at once, #1 is slow (stopped by the win), #2 wins, #3 is slow too.
    tasks = [
        Task("echo", {"text": "bad", "fail": True}),
        Task("echo", {"text": "good-slow", "spin_s": 4.0}),
        Task("echo", {"text": "good", "spin_s": 0.4}),
        Task("echo", {"text": "good-slower", "spin_s": 4.0}),
    ]
    run = orch.race(tasks, validate="starts_good", preflight="off", deadline_s=30)
    res = side_by_side(cli_env, run, FIGURES + RACE_FIGURES)
    assert res.winner is not None and res.winner.index == 2, res.error
    r, env = res.report, res.results
    assert env[0].status is AgentStatus.ERROR and env[1].status is AgentStatus.CANCELLED
    assert env[1].ran_s > 0.2, "racer #1 should have run until the win stopped it"
    # Trying them one after another until the first valid one: #0, then #1 (at least as long
    # as it ran here), then #2.
    in_order = env[0].ran_s + env[1].ran_s + env[2].ran_s
    assert r.sequential_estimate_s == pytest.approx(in_order, rel=1e-9)
    assert r.speedup == pytest.approx(in_order / r.wall_s, rel=1e-9)
    assert r.speedup_vs_winner == pytest.approx(env[2].ran_s / r.wall_s, rel=1e-9)
    assert r.speedup > r.speedup_vs_winner
    assert r.work_wasted_s == pytest.approx(env[0].ran_s + env[1].ran_s + env[3].ran_s, rel=1e-9)


def test_a_gather_whose_merger_waits_in_the_queue_shows_the_wait_apart(
    orch: Orchestrator, cli_env: CliRunner
) -> None:
    naps = [Task("nap", {"seconds": 1.5, "tag": i}) for i in range(4)]
    busy = orch.spawn(naps, preflight="off")  # every slot of the stack, 1.5 s
    wait_for(lambda: busy.status().started == 4, 15, "the four slots busy")
    run = orch.gather([Task("echo", {"text": "g"})], merge="join_behind_naps", preflight="off")
    # More naps than slots, on the queue the merger shares (agents.nap, first in first out):
    # when the member reports, naps are still queued ahead of the merger, which waits for a
    # slot (about 1 s), whichever slots the member and the naps took first.
    after = orch.spawn([Task("nap", {"seconds": 1.0, "tag": 10 + i}) for i in range(8)])
    res = side_by_side(cli_env, run, FIGURES + GATHER_FIGURES)
    rec = orch.store.record(run.id)
    r = res.report
    assert r.merge_wait_s == pytest.approx(
        float(rec["merge_started_at"]) - float(rec["all_reported_at"]), abs=1e-6
    )
    assert r.merge_wait_s > 0.5, r  # the busy slots held it
    assert 0 < r.merge_s < r.merge_wait_s
    assert res.merged == {"texts": ["g"]}
    assert orch.agents() and "agents.nap" in {e.queue for e in orch.agents() if e.name == "nap"}
    # In the picture the wait is the merge row's queued phase, its run the bar after it.
    root = ET.fromstring(timeline_svg(res, width=1100))
    [merge] = [g for g in root.iter(f"{SVG}g") if g.get("class") == "row" and _label(g) == "merge"]
    queued = next(e for e in merge.iter(f"{SVG}rect") if e.get("class") == "queued")
    ran = next(e for e in merge.iter(f"{SVG}rect") if e.get("class") == "ran")
    plot_w = 1100 - 180 - 150
    span = max(res.finished_at, *(e.finished_at or 0 for e in res.results)) - res.created_at
    assert float(queued.get("width", "0")) == pytest.approx(r.merge_wait_s / span * plot_w, abs=2.0)
    assert float(ran.get("x", "0")) == pytest.approx(
        float(queued.get("x", "0")) + float(queued.get("width", "0")), abs=2.0
    )
    lines = timeline_lines(res, width=60, colour=False)
    merge_line = next(line for line in lines if line.startswith("merge"))
    assert "░" in merge_line and "█" in merge_line
    assert merge_line.index("░") < merge_line.index("█")
    for other in (busy, after):
        other.wait(timeout_s=15)


def _label(row: ET.Element) -> str:
    texts = [t for t in row.iter(f"{SVG}text")]
    return (texts[0].text or "") if texts else ""


# -- pure: the rules on hand-made envelopes -------------------------------------------------------
def _env(i: int, status: AgentStatus, start: float | None, end: float | None) -> AgentResult:
    return AgentResult(
        index=i,
        task_id=f"r.{i}",
        agent="nap",
        status=status,
        queued_at=T0,
        started_at=None if start is None else T0 + start,
        finished_at=None if end is None else T0 + end,
    )


def test_race_speedup_is_against_trying_racers_in_order_until_the_winner() -> None:
    results = [
        _env(0, AgentStatus.ERROR, 0.0, 0.5),  # failed after 0.5 s
        _env(1, AgentStatus.CANCELLED, 0.0, 2.05),  # slow: stopped 50 ms after the win
        _env(2, AgentStatus.OK, 0.0, 2.0),  # the winner
        _env(3, AgentStatus.CANCELLED, 0.0, 2.05),  # after the winner: not part of in-order
        _env(4, AgentStatus.SKIPPED, None, None),
    ]
    r = roi(results, created_at=T0, finished_at=T0 + 2.1, winner=2)
    assert r.sequential_estimate_s == pytest.approx(0.5 + 2.05 + 2.0)
    assert r.speedup == pytest.approx(4.55 / 2.1)
    assert r.speedup_vs_winner == pytest.approx(2.0 / 2.1)
    assert r.work_wasted_s == pytest.approx(0.5 + 2.05 + 2.05)
    assert r.work_spent_s == pytest.approx(0.5 + 2.05 + 2.0 + 2.05)
    # Racer #1 finished valid just after #2 won: trying them in order would have stopped at #1.
    late = [*results[:1], _env(1, AgentStatus.OK, 0.0, 2.02), *results[2:]]
    r = roi(late, created_at=T0, finished_at=T0 + 2.1, winner=2)
    assert r.sequential_estimate_s == pytest.approx(0.5 + 2.02)
    assert r.work_wasted_s == pytest.approx(0.5 + 2.02 + 2.05)
    spawn = roi(results[:3], created_at=T0, finished_at=T0 + 2.1)
    assert spawn.speedup_vs_winner is None and spawn.sequential_estimate_s == pytest.approx(4.55)


def _result(span_s: float, merge_s: float = 0.0, merge_wait_s: float = 0.0) -> RunResult:
    results = [_env(0, AgentStatus.OK, 0.0, span_s - merge_s - merge_wait_s)]
    report = roi(
        results,
        created_at=T0,
        finished_at=T0 + span_s,
        merge_s=merge_s,
        merge_wait_s=merge_wait_s,
    )
    return RunResult(
        run_id="r",
        pattern=Pattern.GATHER if merge_s else Pattern.SPAWN,
        status=RunStatus.SUCCEEDED,
        results=results,
        merged={"texts": []} if merge_s else None,
        created_at=T0,
        finished_at=T0 + span_s,
        report=report,
    )


@pytest.mark.parametrize(("span_s", "unit"), [(0.7, "ms"), (1.9, "ms"), (12.0, "s"), (16.3, "s")])
def test_one_unit_per_axis(span_s: float, unit: str) -> None:
    root = ET.fromstring(timeline_svg(_result(span_s)))
    ticks = [t.text or "" for t in root.iter(f"{SVG}text") if t.get("text-anchor") == "middle"]
    assert len(ticks) >= 4
    assert {tick.split()[1] for tick in ticks} == {unit}, ticks
    axis = timeline_lines(_result(span_s), width=60, colour=False)[0].split()
    assert axis[0] == "0" and axis[-1] == unit, axis


def test_merge_wait_and_run_are_two_rows_of_the_table_and_two_phases_of_the_bar() -> None:
    res = _result(20.0, merge_s=0.05, merge_wait_s=16.0)
    table = "\n".join(report_lines(res))
    assert re.search(r"^  merge\s+50 ms$", table, re.M), table
    assert re.search(r"^  merge queue wait\s+16.00 s$", table, re.M), table
    [merge] = [line for line in timeline_lines(res, width=60, colour=False) if "merge" in line]
    bar = merge[13:73]
    assert bar.count("░") == pytest.approx(16.0 / 20.0 * 59, abs=2)
    assert "█" in bar and bar.rindex("░") < bar.index("█")
    assert "50 ms after 16.00 s queued" in merge


def test_report_fields_describe_the_rules() -> None:
    fields = RoiReport.model_fields
    assert "index order until the first valid one" in (
        fields["sequential_estimate_s"].description or ""
    )
    assert fields["speedup_vs_winner"].description
    assert "all_reported_at" in (fields["merge_wait_s"].description or "")
