"""Orchestrations in Flower: the run pages and their JSON served by ``orchestrator flower`` (with
basic auth) on the session's stack, for runs of each pattern; the filters, the secrets, the
escaping, Flower's navigation bar, and (when Chromium is installed) the pages in a browser."""

from __future__ import annotations

import base64
import re
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from orchestrator import EmbeddedStack, Orchestrator, RunResult, Task
from orchestrator.flower import (
    SECRET_SHOWN,
    Links,
    RunFilter,
    navbar_source,
    redact,
    run_of_path,
    tree_html,
)
from tests.conftest import ARTIFACTS, launch_flower, stop_flower, wait_for
from tests.test_flower import PASSWORD, USER, Flower, _browser, _chromium, serve_flower
from workers.models import AgentResult, AgentStatus, Pattern, RoiReport, RunParent, RunStatus
from workers.run_tree import RunTree, TreeTotals, roll_up

SECRET = f"sekrit-{uuid.uuid4().hex}"
#: What a user may put in a payload that an error message then quotes: shown, never run.
HOSTILE = "<script>alert('x')</script>"
SHOTS = ARTIFACTS / "flower-pages"


@pytest.fixture(scope="module")
def flower(stack: EmbeddedStack) -> Iterator[Flower]:
    yield from serve_flower(stack, "flowerpages")


@dataclass
class Runs:
    spawn: RunResult  # one public echo, one secret echo whose output is the secret
    gather: RunResult  # a merge over a secret member: the merge is not shown either
    race: RunResult
    spent: RunResult  # spenders: tokens and dollars, spent and (a race's loser) wasted
    mixed: RunResult  # ok, error (quoting HOSTILE), invalid
    nested: RunResult  # a subagent that ran a child run of its own

    def all(self) -> list[RunResult]:
        return [self.spawn, self.gather, self.race, self.spent, self.mixed, self.nested]


@pytest.fixture(scope="module")
def runs(flower: Flower, orch: Orchestrator) -> Runs:
    # Flower serves before its event receiver listens (events sent before are lost): probe
    # with tiny runs until Flower has seen one, so its task pages of the runs below exist.
    for _ in range(10):
        probe = orch.spawn([Task("echo", {"text": "probe"})])
        probe.wait(timeout_s=30)
        try:
            wait_for(lambda p=probe: _seen(flower, f"{p.id}.coordinator"), 2, "the probe")
            break
        except AssertionError:
            continue
    else:
        pytest.fail(f"Flower saw no task events; log: {flower.log.read_text(errors='replace')}")
    spawn = orch.spawn(
        [Task("echo", {"text": "public"}), Task("echo", {"text": SECRET}, secret=True)]
    ).wait(timeout_s=30)
    gather = orch.gather(
        [Task("echo", {"text": "a"}), Task("echo", {"text": SECRET}, secret=True)], merge="join"
    ).wait(timeout_s=30)
    race = orch.race(
        [Task("echo", {"text": "bad"}), Task("echo", {"text": "good", "spin_s": 0.1})],
        validate="starts_good",
    ).settle(timeout_s=30)
    spend = {"tokens": 400, "seconds": 0.05, "cost_usd": 0.002}
    spent = orch.spawn(
        [Task("spender", {"tag": i, **spend}) for i in range(2)], preflight="off"
    ).wait(timeout_s=30)
    mixed = orch.spawn(
        [
            Task("echo", {"text": "fine"}),
            Task("echo", {"text": HOSTILE, "fail": True}),
            Task("echo", {"text": "shapeless", "invalid_output": True}),
        ]
    ).wait(timeout_s=30)
    nested = orch.spawn([Task("nest", {"texts": ["x", "y"]})], preflight="off").wait(30)
    assert nested.ok and nested.children, nested.error
    return Runs(spawn, gather, race, spent, mixed, nested)


def _seen(fl: Flower, task_id: str) -> bool:
    return fl.get(f"/api/task/info/{task_id}")[0] == 200


def _run_ids(listing: dict[str, Any]) -> list[str]:
    return [row["run_id"] for row in listing["runs"]]


# -- auth ----------------------------------------------------------------------------------------
@pytest.mark.integration
def test_pages_and_api_refuse_requests_without_credentials(flower: Flower, runs: Runs) -> None:
    run_id = runs.spawn.run_id
    for path in (
        "/orchestrations",
        f"/orchestrations/{run_id}",
        "/api/orchestrations",
        f"/api/orchestrations/{run_id}",
    ):
        status, body = flower.get(path, auth=False)
        assert status == 401, (path, status)  # as Flower's own pages refuse
        assert run_id not in body and SECRET not in body
    assert flower.get("/tasks", auth=False)[0] == 401  # the same answer Flower's gives
    assert _get_as(flower, "/api/orchestrations", f"{USER}:not-{PASSWORD}") == 401
    assert flower.get("/orchestrations")[0] == 200


def _get_as(fl: Flower, path: str, credentials: str) -> int:
    token = base64.b64encode(credentials.encode()).decode()
    req = urllib.request.Request(fl.url + path, headers={"Authorization": f"Basic {token}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


# -- the list ------------------------------------------------------------------------------------
@pytest.mark.integration
def test_list_api_has_each_run_newest_first(flower: Flower, runs: Runs) -> None:
    listing = flower.json("/api/orchestrations?limit=500")
    rows = {row["run_id"]: row for row in listing["runs"]}
    for res in runs.all():
        row = rows[res.run_id]
        assert row["pattern"] == res.pattern.value and row["status"] == res.status.value
        assert row["final"] is True and row["n"] == len(res.results)
        assert row["done"] == len(res.results)
        assert row["wall_s"] == pytest.approx(res.report.wall_s)
        assert row["speedup"] == pytest.approx(res.report.speedup)
    created = [row["created_at"] for row in listing["runs"]]
    assert created == sorted(created, reverse=True)
    spent = rows[runs.spent.run_id]
    assert spent["tokens_spent"] == runs.spent.report.tokens_spent == 800
    assert spent["cost_usd_spent"] == pytest.approx(0.004)
    assert spent["tokens_wasted"] == 0
    assert listing["matched"] >= len(runs.all()) and listing["recent"] >= listing["matched"]


@pytest.mark.integration
def test_list_filters_by_status_and_pattern_and_searches_run_ids(
    flower: Flower, runs: Runs
) -> None:
    races = flower.json("/api/orchestrations?pattern=race-then-cancel&limit=500")
    assert runs.race.run_id in _run_ids(races) and runs.spawn.run_id not in _run_ids(races)
    assert {row["pattern"] for row in races["runs"]} == {"race-then-cancel"}
    succeeded = flower.json("/api/orchestrations?status=succeeded&limit=500")
    assert {row["status"] for row in succeeded["runs"]} == {"succeeded"}
    assert runs.spawn.run_id in _run_ids(succeeded)
    assert flower.json("/api/orchestrations?status=open&limit=500")["runs"] == [
        row for row in flower.json("/api/orchestrations?limit=500")["runs"] if not row["final"]
    ]
    found = flower.json(f"/api/orchestrations?q={runs.gather.run_id[:10].upper()}")
    assert _run_ids(found) == [runs.gather.run_id]
    both = f"/api/orchestrations?q={runs.gather.run_id}&pattern=parallel-spawn"
    assert flower.json(both)["runs"] == []
    for bad, said in (("status=bogus", "status 'bogus'"), ("pattern=x", "pattern 'x'")):
        status, body = flower.get(f"/api/orchestrations?{bad}")
        assert status == 400 and said in body, body
    assert flower.get("/api/orchestrations?limit=lots")[0] == 400
    page = flower.get(f"/orchestrations?pattern=race-then-cancel&q={runs.race.run_id}")[1]
    assert f'data-run="{runs.race.run_id}"' in page
    assert f'data-run="{runs.spawn.run_id}"' not in page
    assert flower.get("/orchestrations?status=bogus")[0] == 400


@pytest.mark.integration
def test_list_page_shows_the_columns_and_links_each_run(flower: Flower, runs: Runs) -> None:
    status, page = flower.get("/orchestrations?limit=500")
    assert status == 200
    for column in ("Pattern", "Status", "Done / n", "Wall time", "Speedup", "Tokens wasted"):
        assert f">{column}</th>" in page
    for res in runs.all():
        assert f'href="/orchestrations/{res.run_id}"' in page
    row = re.search(rf'<tr data-run="{runs.spent.run_id}".*?</tr>', page, re.S)
    assert row is not None and "800" in row.group(0) and "$0.0040" in row.group(0)
    assert 'href="/orchestrations"' in page and ">Orchestrations</a>" in page  # navbar


# -- one run -------------------------------------------------------------------------------------
@pytest.mark.integration
def test_run_api_has_the_result_and_the_tree(flower: Flower, runs: Runs) -> None:
    for res in runs.all():
        got = flower.json(f"/api/orchestrations/{res.run_id}")
        assert got["final"] is True and got["progress"] is None
        result = RunResult.model_validate(got["result"])
        assert result.run_id == res.run_id and result.status is res.status
        assert [e.status for e in result.results] == [e.status for e in res.results]
        assert [e.task_id for e in result.results] == [e.task_id for e in res.results]
        tree = got["tree"]
        assert tree["run_id"] == res.run_id
        assert [c["run_id"] for c in tree["children"]] == res.children
        below = sum(c["totals"]["subagents"] for c in tree["children"])
        assert tree["totals"]["runs"] == 1 + len(res.children)
        assert tree["totals"]["subagents"] == len(res.results) + below
    race = flower.json(f"/api/orchestrations/{runs.race.run_id}")["result"]
    assert race["winner"]["index"] == 1 and race["winner"]["output"]["text"] == "good"
    spent = flower.json(f"/api/orchestrations/{runs.spent.run_id}")["tree"]["totals"]
    assert spent["tokens_spent"] == 800
    assert flower.get("/api/orchestrations/no-such-run")[0] == 404
    assert flower.get("/orchestrations/no-such-run")[0] == 404


@pytest.mark.integration
def test_run_page_shows_tree_timeline_roi_outcome_and_subagents(flower: Flower, runs: Runs) -> None:
    for res in runs.all():
        status, page = flower.get(f"/orchestrations/{res.run_id}")
        assert status == 200, page[:500]
        for section in ("tree", "timeline", "roi", "outcome", "subagents"):
            assert f'id="{section}"' in page, (section, res.pattern)
        assert "<svg" in page and f"run {res.run_id}" in page  # the report's picture
        assert ">predicted</th>" in page and "Pre-flight" in page
        for env in res.results:  # each subagent, linked to Flower's task page
            assert f'href="/task/{env.task_id}"' in page
            row = re.search(rf'<tr data-task="{re.escape(env.task_id)}".*?</tr>', page, re.S)
            assert row is not None and f">{env.status.value}</span>" in row.group(0)
        assert f'href="/task/{res.run_id}.coordinator"' in page
        assert "location.reload" not in page  # final: no refresh
    gather = flower.get(f"/orchestrations/{runs.gather.run_id}")[1]
    assert f'href="/task/{runs.gather.run_id}.merge"' in gather and "Merged output" in gather
    race = flower.get(f"/orchestrations/{runs.race.run_id}")[1]
    assert "Winner: #1 echo" in race and "&#9733;" in race
    mixed = flower.get(f"/orchestrations/{runs.mixed.run_id}")[1]
    assert "ValueError: asked to fail" in mixed and "InvalidOutput" in mixed
    # A spawn's outcome: the outputs of its ok subagents (a secret one's not shown).
    spawn = flower.get(f"/orchestrations/{runs.spawn.run_id}")[1]
    outcome = spawn[spawn.index('id="outcome"') : spawn.index('id="subagents"')]
    assert "&quot;text&quot;: &quot;public&quot;" in outcome and "Not shown" in outcome


@pytest.mark.integration
def test_a_going_run_refreshes_until_it_ends(flower: Flower, orch: Orchestrator) -> None:
    run = orch.spawn([Task("nap", {"seconds": 30})], preflight="off", deadline_s=60)
    wait_for(lambda: run.status().started == 1, 20, "the nap to start")
    got = flower.json(f"/api/orchestrations/{run.id}")
    assert got["final"] is False and got["result"] is None
    assert got["progress"]["status"] == "running" and got["progress"]["n"] == 1
    page = flower.get(f"/orchestrations/{run.id}")[1]
    assert "location.reload" in page and "(refreshing)" in page and 'id="timeline"' not in page
    listing = flower.get(f"/orchestrations?status=open&q={run.id}")[1]
    assert f'data-run="{run.id}"' in listing and "so far" in listing
    assert "location.reload" in listing
    run.cancel()
    page = flower.get(f"/orchestrations/{run.id}")[1]
    assert "location.reload" not in page and ">cancelled</span>" in page
    assert flower.json(f"/api/orchestrations/{run.id}")["result"]["status"] == "cancelled"


# -- secrets and escaping ------------------------------------------------------------------------
@pytest.mark.integration
def test_secret_outputs_are_in_no_page_and_no_json(flower: Flower, runs: Runs) -> None:
    bodies = {
        path: flower.get(path)[1]
        for res in runs.all()
        for path in (f"/orchestrations/{res.run_id}", f"/api/orchestrations/{res.run_id}")
    }
    bodies["list"] = flower.get("/orchestrations?limit=500")[1]
    bodies["list api"] = flower.get("/api/orchestrations?limit=500")[1]
    assert [where for where, body in bodies.items() if SECRET in body] == []
    spawn = flower.json(f"/api/orchestrations/{runs.spawn.run_id}")
    assert spawn["secret"] == [1]
    public, hidden = spawn["result"]["results"]
    assert public["output"]["text"] == "public" and hidden["output"] == "<secret>"
    gather = flower.json(f"/api/orchestrations/{runs.gather.run_id}")["result"]
    assert gather["merged"] == "<secret>"  # a merge may quote its secret member
    # A run without secrets shows its outputs.
    race = flower.json(f"/api/orchestrations/{runs.race.run_id}")
    assert race["secret"] == [] and race["result"]["winner"]["output"]["text"] == "good"


@pytest.mark.integration
def test_user_text_is_escaped(flower: Flower, runs: Runs) -> None:
    page = flower.get(f"/orchestrations/{runs.mixed.run_id}")[1]
    assert HOSTILE not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    env = runs.mixed.results[1]
    assert env.status is AgentStatus.ERROR and env.error is not None
    assert HOSTILE in env.error.message  # it was there to escape


# -- Flower's own pages --------------------------------------------------------------------------
@pytest.mark.integration
def test_flower_pages_link_to_the_runs(flower: Flower, runs: Runs) -> None:
    tasks = flower.get("/tasks")[1]
    assert 'href="/orchestrations"' in tasks and ">Orchestrations</a>" in tasks
    run_id = runs.spawn.run_id
    wait_for(lambda: flower.get(f"/task/{run_id}.coordinator")[0] == 200, 10, "Flower's view")
    for task_id in (f"{run_id}.coordinator", runs.spawn.results[0].task_id):
        page = flower.get(f"/task/{task_id}")[1]
        assert f'href="/orchestrations/{run_id}">Run {run_id}</a>' in page, task_id
    coord = flower.json(f"/api/task/info/{run_id}.coordinator")
    assert coord["result"].endswith(f"page /orchestrations/{run_id}'")
    assert (
        "Run "
        not in flower.get("/workers")[1]
        .split("app-nav-secondary")[0]
        .split("Orchestrations</a>")[1]
    )


@pytest.mark.integration
def test_pages_follow_flowers_url_prefix(stack: EmbeddedStack, runs: Runs) -> None:
    port, proc, log = launch_flower(
        stack, f"{USER}:{PASSWORD}", "flowerprefix", {"FLOWER_URL_PREFIX": "ops"}
    )
    fl = Flower(f"http://127.0.0.1:{port}", log)
    try:
        wait_for(lambda: _answers(fl, "/ops/healthcheck"), 20, "Flower under /ops to serve")
        run_id = runs.race.run_id
        page = fl.get(f"/ops/orchestrations?q={run_id}")[1]
        assert f'href="/ops/orchestrations/{run_id}"' in page
        assert 'href="/ops/orchestrations"' in page  # the navbar's link
        run = fl.get(f"/ops/orchestrations/{run_id}")[1]
        assert f'href="/ops/task/{runs.race.results[0].task_id}"' in run
        assert f'href="/ops/api/orchestrations/{run_id}"' in run
        assert fl.json(f"/ops/api/orchestrations/{run_id}")["result"]["run_id"] == run_id
        assert fl.get("/ops/api/orchestrations", auth=False)[0] == 401
        assert fl.get("/orchestrations")[0] == 404  # nothing outside the prefix
    finally:
        stop_flower(proc)


def _answers(fl: Flower, path: str) -> bool:
    try:
        return fl.get(path, auth=False)[0] == 200
    except OSError:
        return False


# -- in a browser --------------------------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.skipif(
    _chromium() is None,
    reason="Chromium is not installed (apt-get install chromium chromium-driver; .ci/run does)",
)
def test_pages_in_headless_chromium(
    flower: Flower, runs: Runs, orch: Orchestrator, tmp_path: Path
) -> None:
    base = flower.url.replace("http://", f"http://{USER}:{PASSWORD}@")
    SHOTS.mkdir(parents=True, exist_ok=True)
    listing = _browser(f"{base}/orchestrations", tmp_path, "--dump-dom")
    assert 'id="orchestrations"' in listing and runs.spawn.run_id in listing
    assert SECRET not in listing
    pages = {
        "list": ("/orchestrations", 1000),
        "spawn": (f"/orchestrations/{runs.spawn.run_id}", 1700),
        "gather": (f"/orchestrations/{runs.gather.run_id}", 1900),
        "race": (f"/orchestrations/{runs.race.run_id}", 1800),
        "spent": (f"/orchestrations/{runs.spent.run_id}", 1900),
        "mixed": (f"/orchestrations/{runs.mixed.run_id}", 1800),
        "tree": (f"/orchestrations/{runs.nested.run_id}", 1800),
    }
    for name, (path, height) in pages.items():
        if name != "list":
            # Server-rendered: the HTML the browser gets is what Flower serves (one fetch; a
            # browser launch per check would cost seconds each).
            status, dom = flower.get(path)
            assert status == 200 and 'id="subagents"' in dom and "<svg" in dom, name
            assert SECRET not in dom and HOSTILE not in dom  # escaped text, not a script
        shot = SHOTS / f"{name}.png"
        shot.unlink(missing_ok=True)
        _browser(f"{base}{path}", tmp_path, f"--screenshot={shot}", height=height)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    # The nested run's page draws its tree: the child run, linked to its own page.
    child = runs.nested.children[0]
    tree_dom = flower.get(f"/orchestrations/{runs.nested.run_id}")[1]
    assert f'href="/orchestrations/{child}"' in tree_dom, "the child run is not on the page"
    assert runs.nested.run_id in flower.get(f"/orchestrations/{child}")[1]  # names its parent
    # Flower's own task page, with the link to its run in the navigation bar.
    coord = f"{runs.spawn.run_id}.coordinator"
    task_page = _browser(f"{base}/task/{coord}", tmp_path, "--dump-dom")
    assert f">Run {runs.spawn.run_id}</a>" in task_page and ">Orchestrations</a>" in task_page
    _browser(f"{base}/task/{coord}", tmp_path, f"--screenshot={SHOTS / 'flower-task.png'}")
    # A going run: its progress and the envelopes so far, caught before the page's first
    # reload (virtual time shorter than REFRESH_S); then, left to reload itself, the page
    # ends on the final result and stops reloading (the browser then goes idle and returns).
    going = orch.spawn(
        [Task("nap", {"seconds": 6}), Task("echo", {"text": "quick"})],
        preflight="off",
        deadline_s=60,
    )
    url = f"{base}/orchestrations/{going.id}"
    try:
        wait_for(lambda: going.status().finished == 1, 20, "the quick one to report")
        early = "--virtual-time-budget=1000"
        dom = _browser(url, tmp_path, early, "--dump-dom")
        assert "(refreshing)" in dom and f'data-task="{going.id}.1"' in dom
        assert f'data-task="{going.id}.0"' not in dom and 'id="timeline"' not in dom
        _browser(url, tmp_path, early, f"--screenshot={SHOTS / 'going.png'}", height=1100)
        ended = _browser(url, tmp_path, "--dump-dom")
        assert 'id="timeline"' in ended and "(refreshing)" not in ended
        assert f'data-task="{going.id}.0" data-status="ok"' in ended
    finally:
        going.cancel()
    # Without credentials the browser gets Flower's refusal, not the page.
    refused = _browser(f"{flower.url}/orchestrations", tmp_path, "--dump-dom")
    assert 'id="orchestrations"' not in refused and runs.spawn.run_id not in refused


# -- pure parts, on constructed models -----------------------------------------------------------
LINKS = Links(
    runs="/p/orchestrations", run=lambda r: f"/p/orchestrations/{r}", task=lambda t: f"/p/task/{t}"
)


def _result(run_id: str, pattern: Pattern, n: int, *, parent: RunParent | None = None) -> RunResult:
    envs = [
        AgentResult(
            index=i, task_id=f"{run_id}.{i}", agent="a<b>", status=AgentStatus.OK,
            output={"text": f"out-{i}"}, queued_at=1.0, started_at=1.1, finished_at=1.5,
        )
        for i in range(n)
    ]  # fmt: skip
    report = RoiReport(
        n=n, wall_s=0.5, sequential_estimate_s=0.4 * n, speedup=0.8 * n, efficiency=0.8,
        work_spent_s=0.4 * n, work_wasted_s=0.0, coordinator_overhead_s=0.01, tokens_spent=10 * n,
    )  # fmt: skip
    return RunResult(
        run_id=run_id, pattern=pattern, status=RunStatus.SUCCEEDED, results=envs, created_at=1.0,
        finished_at=1.5, report=report, parent=parent,
    )  # fmt: skip


def _node(result: RunResult, children: list[RunTree]) -> RunTree:
    node = RunTree(
        run_id=result.run_id, pattern=result.pattern, status=result.status, parent=result.parent,
        result=result, children=children, totals=TreeTotals(runs=1, subagents=0, wall_s=0.0),
    )  # fmt: skip
    return node.model_copy(update={"totals": roll_up(node)})


def _parent(run_id: str, index: int, depth: int) -> RunParent:
    return RunParent(
        run_id=run_id, index=index, agent="lead", task_id=f"{run_id}.{index}",
        root_run_id="root", depth=depth,
    )  # fmt: skip


def test_a_nested_tree_renders_every_run_with_its_totals() -> None:
    grandchild = _node(_result("gc<1>", Pattern.RACE, 2, parent=_parent("c1", 0, 2)), [])
    c1 = _node(_result("c1", Pattern.GATHER, 3, parent=_parent("root", 0, 1)), [grandchild])
    c2 = _node(_result("c2", Pattern.SPAWN, 1, parent=_parent("root", 1, 1)), [])
    root = _node(_result("root", Pattern.SPAWN, 2), [c1, c2])
    page = tree_html(root, LINKS, current="c1")
    # Nested lists in tree order: root > (c1 > gc), c2.
    order = re.findall(r'<li data-run="([^"]+)"', page)
    assert order == ["root", "c1", "gc&lt;1&gt;", "c2"]
    assert page.index('data-run="gc&lt;1&gt;"') < page.index("</ul>", page.index('data-run="c1"'))
    assert page.count("<ul") == 3  # the tree, root's children, c1's child
    # The page's own run in bold, the others linked to their pages; each says what started it.
    assert "<strong><code>c1</code></strong>" in page
    assert 'href="/p/orchestrations/root"' in page and 'href="/p/orchestrations/c2"' in page
    assert 'href="/p/orchestrations/gc&lt;1&gt;"' in page  # escaped, never markup
    assert "<1>" not in page
    assert 'from #0 lead (<a href="/p/task/c1.0">task</a>)' in page
    # Rolled-up totals: 4 runs, 8 subagents, every run's tokens once.
    assert root.totals.runs == 4 and root.totals.subagents == 8
    assert "4 runs · 8 subagents" in page and "tokens 80 (wasted 0)" in page
    assert "2 runs · 5 subagents" in page  # c1 and its child
    assert "race-then-cancel of 2" in page and "gather-then-merge of 3" in page


def test_redaction_hides_secret_outputs_and_the_merge() -> None:
    result = _result("r", Pattern.GATHER, 3).model_copy(update={"merged": {"all": "x"}})
    hidden = redact(result, {1})
    assert [e.output for e in hidden.results] == [
        {"text": "out-0"},
        SECRET_SHOWN,
        {"text": "out-2"},
    ]
    assert hidden.merged == SECRET_SHOWN
    assert redact(result, set()) == result  # nothing secret: all shown
    unknown = redact(result, None)  # the record does not say: nothing shown
    assert {e.output for e in unknown.results} == {SECRET_SHOWN}
    race = _result("q", Pattern.RACE, 2)
    race = race.model_copy(update={"winner": race.results[0]})
    assert redact(race, {0}).winner.output == SECRET_SHOWN  # type: ignore[union-attr]
    assert redact(race, {1}).winner.output == {"text": "out-0"}  # type: ignore[union-attr]


def test_filters_name_what_they_refuse() -> None:
    assert RunFilter(status="open", pattern="race-then-cancel").problem() is None
    assert "status 'done'" in (RunFilter(status="done").problem() or "")
    assert "pattern 'fan-out'" in (RunFilter(pattern="fan-out").problem() or "")
    assert "limit" in (RunFilter(limit=0).problem() or "")
    flt = RunFilter(status="open")
    assert flt.keeps("parallel-spawn", "running") and not flt.keeps("parallel-spawn", "failed")
    assert not RunFilter().keeps(None, None)  # expired between the index and the record


def test_flower_task_paths_name_their_run() -> None:
    assert run_of_path("/task/abc.coordinator") == "abc"
    assert run_of_path("/prefix/task/abc.3") == "abc"
    assert run_of_path("/task/abc.b2") == "abc"
    assert run_of_path("/task/abc.merge") == "abc"
    assert run_of_path("/task/9b0c-uuid-of-another-task") is None
    assert run_of_path("/tasks") is None and run_of_path("/workers") is None


def test_navbar_gets_the_link_after_flowers_tabs() -> None:
    flower_nav = (
        '<nav><ul class="app-nav navbar-nav"><li>Workers</li><li>Tasks</li></ul>'
        '<ul class="app-nav app-nav-secondary navbar-nav"><li>Theme</li></ul></nav>'
    )
    ours = navbar_source(flower_nav)
    tabs = ours.split('<ul class="app-nav app-nav-secondary')[0]
    assert tabs.index("<li>Tasks</li>") < tabs.index(">Orchestrations</a>")
    assert "reverse_url('orchestrations')" in tabs
    assert navbar_source("<nav>something else</nav>") == "<nav>something else</nav>"
