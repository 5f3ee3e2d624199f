"""Run events as typed models, ``orchestrator watch`` and ``orchestrator status``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from orchestrator import EmbeddedStack, Orchestrator, RunResult, Task
from orchestrator.cli import main
from orchestrator.cli.watch import RunView, watch_run
from orchestrator.events import EventType, parse_event, read_events

CLIENT = Path(__file__).with_name("nonpython_client.py")


def test_unknown_and_malformed_events_are_kept_not_refused() -> None:
    ev = parse_event("r1", "5-1", {"type": "future_thing", "ts": "12.5", "index": "x", "k": "v"})
    assert ev.type == "future_thing" and ev.kind is None
    assert ev.ts == 12.5 and ev.index is None and ev.data["k"] == "v"
    pre = parse_event("r1", "5-2", {"type": "preflight", "verdict": "pays", "ts": "1"})
    assert pre.kind is EventType.PREFLIGHT and pre.verdict == "pays"
    fin = parse_event(
        "r1", "5-3", {"type": "finished", "index": "2", "status": "cancelled", "won": "0"}
    )
    assert fin.index == 2 and fin.stopped and fin.won is False and not fin.final
    done = parse_event("r1", "5-4", {b"type": b"run_finished", b"status": b"failed"})
    assert done.final and done.status == "failed"


def test_run_view_folds_events_per_pattern() -> None:
    rec = {
        "run_id": "r1",
        "pattern": "race-then-cancel",
        "agents": '["a", "b", "c"]',
        "created_at": "100.0",
        "deadline_at": "160.0",
    }
    view = RunView.from_record(rec)
    for i, fields in enumerate(
        [
            {"type": "queued", "n": "3"},
            {"type": "started", "index": "0", "worker": "w1"},
            {"type": "started", "index": "1", "worker": "w2"},
            {"type": "finished", "index": "0", "status": "invalid", "won": "0"},
        ]
    ):
        view.apply(parse_event("r1", f"1-{i}", {"ts": "101", **fields}))
    assert view.strip() == "!>." and view.progress() == (1, 3)
    for i, fields in enumerate(
        [
            {"type": "finished", "index": "1", "status": "ok"},
            {"type": "won", "index": "1"},
            {"type": "run_finished", "status": "succeeded"},
        ]
    ):
        view.apply(parse_event("r1", f"2-{i}", {"ts": "102.5", **fields}))
    assert view.strip() == "!W." and view.progress() == (3, 3) and view.finished
    body = view.body()
    assert "  race won by #1" in body
    assert "  #1   b                  ok        1500 ms (winner)  w2" in body
    assert view.header(200.0).endswith("succeeded  elapsed 2.5s")


@pytest.fixture
def cli_env(stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", stack.url)
    monkeypatch.setenv("ORCH_KEY_PREFIX", stack.key_prefix)


@pytest.mark.integration
def test_watch_follows_a_live_gather_to_its_result(orch: Orchestrator, cli_env: None) -> None:
    # Six members on four worker slots: two waves, so the watcher sees the run move.
    run = orch.gather(
        [Task("echo", {"text": f"t{i}", "spin_s": 0.4}) for i in range(6)], merge="join"
    )
    out = CliRunner().invoke(main, ["watch", run.id])
    assert out.exit_code == 0, out.output
    text = out.output
    assert text.startswith("legend: ")
    bars = re.findall(r"\] (\d)/7 steps", text)
    assert len(set(bars)) >= 2, text  # it drew progress more than once, as it happened
    assert bars[-1] == "7" and bars == sorted(bars)
    assert f"run {run.id}  gather-then-merge" in text
    assert "running" in text and re.search(r"#0\s+echo\s+ok", text)
    assert re.search(r"elapsed \d+\.\ds", text)
    assert "merge join: done" in text
    assert "result: succeeded" in text and '"texts": ["t0", "t1", "t2", "t3", "t4", "t5"]' in text


@pytest.mark.integration
def test_watch_in_a_pipe_prints_on_changes_of_state_not_on_progress(
    orch: Orchestrator, cli_env: None
) -> None:
    # Three subtasks reporting progress for 7 s (about 35 progress events each).
    run = orch.spawn([Task("ticker", {"seconds": 7 + i / 100}) for i in range(3)], deadline_s=60)
    out = CliRunner().invoke(main, ["watch", run.id])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    blocks = [ln for ln in lines if ln.startswith(f"run {run.id}  ")]
    progress = [ln for ln in lines if ln.startswith(f"... run {run.id}  ")]
    # A block per change of state, at most: submitted, running, 3 starts, 3 ends, succeeded.
    assert 2 <= len(blocks) <= 9, out.output
    # Progress in between: one line at most every 5 s (7 s of work, the first block at once).
    assert 1 <= len(progress) <= 2, out.output
    assert re.search(r"\] \d/3 subtasks .*running=\d.*  #\d \d+%", progress[0]), progress[0]
    assert len(lines) <= 80, f"{len(lines)} lines"
    assert "result: succeeded" in out.output


@pytest.mark.integration
def test_watch_race_failure_and_timeout_exit_codes(
    orch: Orchestrator, cli_env: None, tmp_marker: Callable[[str], str]
) -> None:
    race = orch.race(
        [Task("echo", {"text": "bad"}), Task("echo", {"text": "good", "spin_s": 0.2})],
        validate="starts_good",
    )
    out = CliRunner().invoke(main, ["watch", race.id])
    assert out.exit_code == 0, out.output
    assert "race won by #1" in out.output and "(winner)" in out.output
    assert "winner: #1 echo" in out.output

    failed = orch.spawn([Task("echo", {"text": "x", "fail": True})])
    out = CliRunner().invoke(main, ["watch", failed.id, "--json"])
    assert out.exit_code == 1
    assert '"status": "failed"' in out.output and "asked to fail" in out.output

    slow = orch.spawn(
        [Task("work", {"seconds": 30, "marker": tmp_marker("slow"), "mode": "cooperative"})],
        deadline_s=60,
    )
    out = CliRunner().invoke(main, ["watch", slow.id, "--timeout", "0.5"])
    assert out.exit_code == 2, out.output
    assert f"the run goes on: orchestrator watch {slow.id} / orchestrator cancel {slow.id}" in (
        out.output
    )
    slow.cancel()

    out = CliRunner().invoke(main, ["watch", "no-such-run"])
    assert out.exit_code == 1 and "no run 'no-such-run'" in out.output


@pytest.mark.integration
def test_watch_redraws_in_place_on_a_terminal(orch: Orchestrator) -> None:
    run = orch.spawn([Task("echo", {"text": f"t{i}", "spin_s": 0.3}) for i in range(6)])
    drawn: list[str] = []
    res = watch_run(orch.store, orch.revoke, run.id, drawn.append, tty=True, refresh_s=0.1)
    assert res.ok
    redraws = [d for d in drawn if d.startswith("\x1b[")]
    assert len(redraws) >= 3  # the clock ticks even when nothing else changes
    lines_up = int(re.match(r"\x1b\[(\d+)F", redraws[-1]).group(1))  # type: ignore[union-attr]
    assert lines_up == drawn[-2].count("\n") + 1  # exactly over the previous drawing
    assert "6/6 subtasks" in drawn[-1]


@pytest.mark.integration
def test_event_stream_has_every_kind(orch: Orchestrator) -> None:
    run = orch.race(
        [Task("echo", {"text": "bad"}), Task("echo", {"text": "good", "spin_s": 0.2})],
        validate="starts_good",
    )
    run.wait(timeout_s=30)
    kinds = {e.kind for e in read_events(orch.store, run.id)}
    assert {
        EventType.SUBMITTED,
        EventType.QUEUED,
        EventType.EXPANDED,
        EventType.STARTED,
        EventType.FINISHED,
        EventType.WON,
        EventType.CANCEL_REQUESTED,
        EventType.RUN_FINISHED,
    } <= kinds
    gather = orch.gather([Task("echo", {"text": "a"})], merge="join")
    gather.wait(timeout_s=30)
    assert EventType.MERGED in {e.kind for e in read_events(orch.store, gather.id)}


@pytest.mark.integration
def test_status_lists_recent_runs_newest_first(orch: Orchestrator, cli_env: None) -> None:
    first = orch.spawn([Task("echo", {"text": "1"})])
    second = orch.spawn([Task("echo", {"text": "2"})])
    second.wait(timeout_s=30)
    first.wait(timeout_s=30)
    out = CliRunner().invoke(main, ["status", "--limit", "5"])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith(second.id) and lines[1].startswith(first.id)
    assert re.search(r"succeeded\s+1/1 done\s+\d+s ago", lines[0])
    out = CliRunner().invoke(main, ["status", "no-such-run"])
    assert out.exit_code == 1 and "no run 'no-such-run'" in out.output


@pytest.mark.integration
@pytest.mark.parametrize("agent", ["echo", "no_such_agent"])
def test_a_client_that_does_not_import_this_project(stack: EmbeddedStack, agent: str) -> None:
    """tests/nonpython_client.py speaks only Redis: the message the README documents."""
    request = {
        "run_id": f"np-{agent[:4]}-{time.time_ns() % 10**9}",
        "pattern": "gather-then-merge",
        "merge": "join",
        "tasks": [{"agent": agent, "payload": {"text": t}} for t in ("from", "go")],
        "deadline_s": 30,
    }
    out = subprocess.run(
        [sys.executable, "-I", str(CLIENT), stack.url, stack.key_prefix],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    result = RunResult.model_validate(reply["result"])
    assert result.run_id == request["run_id"]
    assert reply["events"][0] == "submitted" and reply["events"][-1] == "run_finished"
    if agent == "echo":
        assert result.ok and result.merged == {"texts": ["from", "go"]}
        assert [r.output["text"] for r in result.results] == ["from", "go"]
        assert {"queued", "expanded", "started", "finished", "merged"} <= set(reply["events"])
    else:  # refused by the coordinator, with the reason a Python client gets at submit
        assert not result.ok and result.error is not None
        assert "UnknownAgent" in result.error and "no_such_agent" in result.error
