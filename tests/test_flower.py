"""Flower on the embedded stack: started by ``orchestrator flower`` with basic auth, one run of
each pattern, its REST API, secrets, and (when Chromium is installed) the pages in a browser."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from orchestrator import EmbeddedStack, Orchestrator, RunResult, Task
from orchestrator.cli import main
from tests.conftest import ARTIFACTS, launch_flower, stop_flower, wait_for
from workers.models import AgentKind, AgentResult, AgentStatus

USER, PASSWORD = "admin", f"pw-{uuid.uuid4().hex[:8]}"
SECRET = f"sekrit-{uuid.uuid4().hex}"


@dataclass
class Flower:
    url: str
    log: Path

    def get(self, path: str, *, auth: bool = True) -> tuple[int, str]:
        headers = {}
        if auth:
            token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            headers["Authorization"] = f"Basic {token}"
        req = urllib.request.Request(self.url + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, f"{path}: {status} {body[:300]}"
        return json.loads(body)


def serve_flower(stack: EmbeddedStack, tag: str) -> Iterator[Flower]:
    """``python -m orchestrator flower`` against ``stack`` with basic auth, as an operator runs
    it, once it serves; stopped after (``yield from`` in a fixture)."""
    port, proc, log = launch_flower(stack, f"{USER}:{PASSWORD}", tag)
    fl = Flower(f"http://127.0.0.1:{port}", log)
    try:

        def serving() -> bool:
            assert proc.poll() is None, f"flower exited: {log.read_text(errors='replace')}"
            try:
                return fl.get("/healthcheck", auth=False)[0] == 200
            except OSError:
                return False

        wait_for(serving, 20, "Flower to serve")
        yield fl
    finally:
        stop_flower(proc)


@pytest.fixture(scope="module")
def flower(stack: EmbeddedStack) -> Iterator[Flower]:
    """Flower against the session's stack."""
    yield from serve_flower(stack, "flower")


@dataclass
class Runs:
    spawn: RunResult
    gather: RunResult
    race: RunResult
    eta_task: str  # an agent message with a secret payload, held by a worker until its ETA
    mixed: RunResult  # a spawn of one ok, one error and one invalid subagent
    stopped: RunResult  # a race with losers stopped while running and losers never started


#: The Flower state each envelope status must show.
FLOWER_STATE = {
    AgentStatus.OK: "SUCCESS",
    AgentStatus.ERROR: "FAILURE",
    AgentStatus.INVALID: "FAILURE",
    AgentStatus.CANCELLED: "REVOKED",
    AgentStatus.SKIPPED: "REVOKED",
}


#: States after which Flower's view of a task no longer changes.
FINAL_STATES = ("SUCCESS", "FAILURE", "REVOKED")


def _seen_by(fl: Flower, task_id: str) -> bool:
    return fl.get(f"/api/task/info/{task_id}")[0] == 200


def _settled_in(fl: Flower, task_id: str) -> bool:
    """Flower has the task in a final state (a run can end before its last task-succeeded
    event is sent: the envelope is recorded inside the task)."""
    status, body = fl.get(f"/api/task/info/{task_id}")
    return status == 200 and json.loads(body).get("state") in FINAL_STATES


@pytest.fixture(scope="module")
def runs(flower: Flower, orch: Orchestrator) -> Iterator[Runs]:
    # Flower serves before its event receiver listens; events sent before that are lost, so
    # probe with tiny runs until one shows up.
    for _ in range(10):
        probe = orch.spawn([Task("echo", {"text": "probe"})])
        probe.wait(timeout_s=30)
        try:
            wait_for(lambda p=probe: _seen_by(flower, f"{p.id}.coordinator"), 2, "the probe")
            break
        except AssertionError:
            continue  # sent before Flower listened: probe again
    else:
        pytest.fail(f"Flower saw no task events; log: {flower.log.read_text(errors='replace')}")
    spawn = orch.spawn(
        [
            Task("echo", {"text": "public"}),
            Task("echo", {"text": "hidden", "api_key": SECRET}, secret=True),
        ]
    ).wait(timeout_s=30)
    gather = orch.gather([Task("echo", {"text": t}) for t in "ab"], merge="join").wait(30)
    race = orch.race(
        [Task("echo", {"text": "bad"}), Task("echo", {"text": "good", "spin_s": 0.2})],
        validate="starts_good",
    ).settle(timeout_s=30)
    mixed = orch.spawn(
        [
            Task("echo", {"text": "fine"}),
            Task("echo", {"text": "oops", "fail": True}),
            Task("echo", {"text": "shapeless", "invalid_output": True}),
        ]
    ).wait(timeout_s=30)
    # Three long racers take three of the four slots and are stopped by the win; the last two
    # racers wait in the queue and never start. One agent for all: one queue, taken in order.
    stopped = orch.race(
        [
            *[Task("echo", {"text": f"slow-{i}", "spin_s": 20}) for i in range(3)],
            Task("echo", {"text": "good", "spin_s": 0.3}),
            Task("echo", {"text": "good-late"}),
            Task("echo", {"text": "good-later"}),
        ],
        validate="starts_good",
        preflight="off",
        deadline_s=60,
    ).settle(timeout_s=30)
    eta_task = f"eta-{uuid.uuid4().hex[:8]}.0"
    entry = orch.catalog.get(AgentKind.AGENT, "echo")
    orch.app.send_task(
        entry.task_name,
        kwargs={"run_id": "no-such-run", "index": 0, "payload": {"api_key": SECRET}, "meta": {}},
        queue=entry.queue,
        task_id=eta_task,
        countdown=600,
        argsrepr="run=no-such-run index=0/1",
        kwargsrepr="payload=<secret>",
    )
    for res in (spawn, gather, race, mixed, stopped):
        ids = [r.task_id for r in res.results] + [f"{res.run_id}.coordinator"]
        wait_for(lambda ids=ids: all(_settled_in(flower, i) for i in ids), 10, "Flower's view")
    yield Runs(spawn, gather, race, eta_task, mixed, stopped)
    orch.revoke([eta_task])


def test_flower_refuses_to_start_without_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORCH_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.delenv("ORCH_FLOWER__BASIC_AUTH", raising=False)
    monkeypatch.delenv("ORCH_FLOWER__LOCAL_ONLY", raising=False)
    out = CliRunner().invoke(main, ["flower"])
    assert out.exit_code != 0 and "ORCH_FLOWER__BASIC_AUTH" in out.output
    monkeypatch.setenv("ORCH_FLOWER__LOCAL_ONLY", "true")
    out = CliRunner().invoke(main, ["flower", "--address", "0.0.0.0"])
    assert out.exit_code != 0 and "loopback" in out.output


@pytest.mark.integration
def test_flower_asks_for_credentials(flower: Flower) -> None:
    assert flower.get("/api/tasks", auth=False)[0] == 401
    assert flower.get("/tasks", auth=False)[0] == 401
    assert flower.get("/api/tasks")[0] == 200


@pytest.mark.integration
def test_rest_api_shows_each_run_rooted_at_its_coordinator(
    flower: Flower, runs: Runs, orch: Orchestrator
) -> None:
    tasks = flower.json("/api/tasks")
    for res, width in ((runs.spawn, 2), (runs.gather, 2), (runs.race, 2)):
        coord_id = f"{res.run_id}.coordinator"
        coord = flower.json(f"/api/task/info/{coord_id}")
        assert coord["name"] == "orchestrator.run" and coord["state"] == "SUCCESS"
        assert coord["args"] == f"run={res.run_id} pattern={res.pattern.value} width={width}"
        assert coord["worker"].startswith("coordinator@")
        # A one-line summary of the run, not the expansion's dict with an epoch deadline.
        assert coord["result"] == _summary_line(orch, res, width)
        members = [r.task_id for r in res.results]
        assert sorted(coord["children"]) == sorted(members)
        for i, task_id in enumerate(members):
            info = tasks[task_id]
            assert info["name"] == "agents.echo"  # each agent under its own task name
            assert info["root_id"] == coord_id and info["parent_id"] == coord_id
            assert info["args"].startswith(f"run={res.run_id} pattern={res.pattern.value} ")
            assert info["args"].endswith(f"index={i}/{width}")
            assert info["state"] == FLOWER_STATE[res.results[i].status], (info, res.results[i])
    merge = tasks[f"{runs.gather.run_id}.merge"]
    assert merge["name"] == "mergers.join" and merge["state"] == "SUCCESS"
    assert merge["root_id"] == f"{runs.gather.run_id}.coordinator"
    assert "'status': 'succeeded'" in merge["result"]


def _summary_line(orch: Orchestrator, res: RunResult, width: int) -> str:
    """What the coordinator task's result must read (as Flower shows a str: its repr)."""
    rec = orch.store.record(res.run_id)
    deadline_s = float(rec["deadline_at"]) - float(rec["created_at"])
    return (
        f"'run {res.run_id}: {res.pattern.value} of {width} sent; deadline in {deadline_s:.0f} s; "
        f"page /orchestrations/{res.run_id}'"
    )


def _flower_view(fl: Flower, env: AgentResult) -> dict[str, Any]:
    info: dict[str, Any] = fl.json(f"/api/task/info/{env.task_id}")
    return info


@pytest.mark.integration
def test_each_outcome_shows_its_own_state(
    flower: Flower, runs: Runs, stack: EmbeddedStack, orch: Orchestrator
) -> None:
    ok, error, invalid = (_flower_view(flower, env) for env in runs.mixed.results)
    assert [r.status for r in runs.mixed.results] == [
        AgentStatus.OK,
        AgentStatus.ERROR,
        AgentStatus.INVALID,
    ]
    assert ok["state"] == "SUCCESS" and "'status': 'ok'" in ok["result"]
    assert error["state"] == "FAILURE" and invalid["state"] == "FAILURE"
    # The error's type and message, as the envelope has them.
    assert "SubagentFailed" in error["exception"]
    assert "#1 echo error: ValueError: asked to fail: oops" in error["exception"]
    assert "#2 echo invalid: InvalidOutput: " in invalid["exception"]
    coord = flower.json(f"/api/task/info/{runs.mixed.run_id}.coordinator")
    assert coord["result"] == _summary_line(orch, runs.mixed, 3)

    race = runs.stopped
    assert race.winner is not None and race.winner.index == 3, race.error
    statuses = [r.status for r in race.results]
    assert statuses[:3] == [AgentStatus.CANCELLED] * 3, race.results
    assert statuses[4:] == [AgentStatus.SKIPPED] * 2, race.results
    states = [_flower_view(flower, env)["state"] for env in race.results]
    assert states == ["REVOKED"] * 3 + ["SUCCESS"] + ["REVOKED"] * 2, states

    # Expected outcomes: one INFO line each in the worker's log, no traceback.
    logs = (stack.log("worker1") + stack.log("worker2")).splitlines()
    for env in (runs.mixed.results[1], race.results[0]):
        at = [i for i, line in enumerate(logs) if f"[{env.task_id}]" in line]
        lines = [logs[i] for i in at]
        assert any("INFO" in line for line in lines), lines
        assert not any("ERROR" in line or "WARNING" in line for line in lines), lines
        following = [logs[i + 1] for i in at if i + 1 < len(logs)]
        assert not any(line.startswith("Traceback") for line in following), following


@pytest.mark.integration
def test_secret_payloads_never_show(flower: Flower, runs: Runs, orch: Orchestrator) -> None:
    secret_task = runs.spawn.results[1].task_id
    info = flower.json(f"/api/task/info/{secret_task}")
    assert info["kwargs"] == "payload=<secret>" and info["state"] == "SUCCESS"
    assert flower.json(f"/api/task/info/{runs.spawn.results[0].task_id}")["kwargs"] == (
        "payload={'text': 'public'}"
    )
    bodies = {
        "/api/tasks": flower.get("/api/tasks")[1],
        "task info": flower.get(f"/api/task/info/{secret_task}")[1],
        "coordinator info": flower.get(f"/api/task/info/{runs.spawn.run_id}.coordinator")[1],
        "task result": flower.get(f"/api/task/result/{secret_task}")[1],
        "task page": flower.get(f"/task/{secret_task}")[1],
    }
    # The worker page lists reserved and scheduled tasks from `inspect`: the held ETA message
    # carries the secret in its kwargs.
    workers = [w.hostname for w in orch.live_processes() if w.role == "worker"]
    scheduled: list[Any] = []
    for name in workers:
        status, body = flower.get(f"/api/workers?refresh=1&workername={name}")
        assert status == 200, body
        bodies[f"workers api {name}"] = body
        bodies[f"worker page {name}"] = flower.get(f"/worker/{name}")[1]
        scheduled += json.loads(body).get(name, {}).get("scheduled", [])
    held = [s["request"] for s in scheduled if s["request"]["id"] == runs.eta_task]
    assert held and held[0]["kwargs"] == "payload=<secret>", scheduled  # it was listed
    leaks = [where for where, body in bodies.items() if SECRET in body]
    assert leaks == []
    # Nor in the result backend (result_extended would store the raw kwargs there).
    # (Spawn members store no Celery result at all; gather members and coordinators do.)
    stored = [
        orch.store.r.get(k)
        for k in orch.store.r.scan_iter(f"{orch.store.keys.kombu_prefix}celery-task-meta-*")
    ]
    assert stored, "no result in the backend to check"
    assert [v for v in stored if v and SECRET in v] == []


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _browser(url: str, tmp: Path, *args: str, height: int = 1000) -> str:
    chromium = _chromium()
    assert chromium is not None
    profile = tmp / f"profile-{uuid.uuid4().hex[:6]}"
    out = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--window-size=1400,{height}",
            # Flower's tasks table fills from an XHR after load: give its scripts time.
            "--virtual-time-budget=5000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


@pytest.mark.integration
@pytest.mark.skipif(
    _chromium() is None,
    reason="Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)",
)
def test_flower_pages_in_headless_chromium(flower: Flower, runs: Runs, tmp_path: Path) -> None:
    base = flower.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    ARTIFACTS.mkdir(exist_ok=True)
    # The tasks list shows the newest 15 tasks (Flower's page length): the runs of the fixture
    # are older than the other tests' by now, so each is checked on its coordinator's page,
    # which lists every subtask as a child.
    tasks_html = _browser(f"{base}/tasks", tmp_path, "--dump-dom")
    assert "orchestrator.run" in tasks_html and "agents." in tasks_html
    assert SECRET not in tasks_html
    for res in (runs.spawn, runs.gather, runs.race):
        page = _browser(f"{base}/task/{res.run_id}.coordinator", tmp_path, "--dump-dom")
        assert f"run={res.run_id} pattern={res.pattern.value}" in page
        assert all(env.task_id in page for env in res.results), res.pattern  # its children
        assert SECRET not in page
    merged = _browser(f"{base}/task/{runs.gather.run_id}.merge", tmp_path, "--dump-dom")
    assert "mergers.join" in merged and "SUCCESS" in merged

    coord = f"{runs.gather.run_id}.coordinator"
    page = _browser(f"{base}/task/{coord}", tmp_path, "--dump-dom")
    assert f"run={runs.gather.run_id} pattern=gather-then-merge width=2" in page
    assert "SUCCESS" in page and "coordinator@" in page
    assert all(env.task_id in page for env in runs.gather.results)  # its children

    for name, path, height in (("tasks", "/tasks", 1000), ("coordinator", f"/task/{coord}", 1900)):
        shot = ARTIFACTS / f"flower-{name}.png"
        shot.unlink(missing_ok=True)
        _browser(f"{base}{path}", tmp_path, f"--screenshot={shot}", height=height)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
