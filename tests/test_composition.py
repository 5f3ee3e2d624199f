"""Composition on real workers: subagents that start child runs (ctx.spawn / gather / race),
the tree they make, one deadline, one budget and one cancel for the whole tree, limits against
runaway trees, no deadlock on one worker process, and routing."""

from __future__ import annotations

import base64
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import (
    EmbeddedStack,
    Orchestrator,
    RunStatus,
    RunTree,
    Task,
    UnknownAgent,
)
from tests.agents_tree import Ask, Fan, Query, SyncFan
from tests.conftest import (
    AGENT_MODULES,
    client_for,
    launch_flower,
    stack_for,
    stop_flower,
    wait_for,
)
from workers.models import AgentResult, AgentStatus
from workers.names import coordinator_id

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tree_stack() -> Iterator[EmbeddedStack]:
    """One worker process (two sync slots, six async places): every tree below runs on it."""
    yield from stack_for(
        name="tree",
        workers=1,
        concurrency=2,
        agent_modules=[*AGENT_MODULES, "tests.agents_tree"],
        extra_env={
            "ORCH_TREE__MAX_DEPTH": "3",
            "ORCH_TREE__MAX_SUBAGENTS": "200",
            "ORCH_AIO__MAX_IN_FLIGHT": "6",
        },
    )


@pytest.fixture(scope="module")
def torch(tree_stack: EmbeddedStack) -> Iterator[Orchestrator]:
    yield from client_for(tree_stack)


def nodes(tree: RunTree) -> list[RunTree]:
    """Every run of the tree, top first."""
    out = [tree]
    for child in tree.children:
        out.extend(nodes(child))
    return out


def envelopes(tree: RunTree) -> list[AgentResult]:
    return [e for n in nodes(tree) if n.result for e in n.result.results]


def test_lead_gathers_researchers_that_race_solvers_and_the_tree_adds_up(
    torch: Orchestrator,
) -> None:
    q = Query(topics=["a", "b", "c", "d"], solver_ms=[50, 2000], tokens=1000)
    run = torch.spawn([Task("tree.lead", q)], deadline_s=60)
    result = run.wait(timeout_s=60)
    assert result.ok, result.error
    for race in nodes(run.tree())[2:]:
        torch.get_run(race.run_id).settle(timeout_s=10)  # the losers' last spend is in
    answer = result.outputs()[0]
    assert answer["facts"] == [f"{t} by approach 0" for t in "abcd"]
    assert len(result.children) == 1 and answer["children"] == result.children

    tree = run.tree()
    assert [n.pattern.value for n in nodes(tree)] == [
        "parallel-spawn", "gather-then-merge", *["race-then-cancel"] * 4,
    ]  # fmt: skip
    gather = tree.children[0]
    assert gather.parent is not None and gather.parent.agent == "tree.lead"
    assert gather.parent.run_id == run.id and gather.parent.depth == 1
    for race in gather.children:
        assert race.parent is not None
        assert race.parent.agent == "tree.researcher" and race.parent.depth == 2
        assert race.parent.root_run_id == run.id
        assert race.parent.ancestors == [run.id, gather.run_id]
        assert race.result is not None and race.result.winner is not None
        assert race.result.winner.output["fact"].endswith("approach 0")
    # The totals are the sums over the runs (each run's own ledger, nothing counted twice).
    everything = nodes(tree)
    assert tree.totals.runs == 6
    assert tree.totals.subagents == 1 + 4 + 8
    own = [n.result.report for n in everything if n.result]
    assert tree.totals.tokens_spent == sum(r.tokens_spent for r in own)
    assert tree.totals.work_spent_s == pytest.approx(sum(r.work_spent_s for r in own))
    # The winners' 1000 tokens each are kept; the losers burned some before they stopped.
    assert tree.totals.tokens_spent >= 4 * 1000
    assert tree.totals.tokens_wasted == sum(r.tokens_wasted for r in own)
    assert 0 < tree.totals.tokens_wasted < tree.totals.tokens_spent


def test_cancelling_the_root_stops_every_descendant(torch: Orchestrator, tmp_path: Path) -> None:
    # Three topics: six solvers, as many as the worker's async places (their parents, waiting,
    # lend theirs).
    q = Query(topics=["a", "b", "c"], solver_ms=[4000, 4000], marker_dir=str(tmp_path))
    run = torch.spawn([Task("tree.lead", q)], deadline_s=60)

    def solvers_running() -> bool:
        races = [n for n in nodes(run.tree()) if n.pattern.value == "race-then-cancel"]
        return len(races) == 3 and all(n.progress and n.progress.started == 2 for n in races)

    wait_for(solvers_running, 30, "six solvers running, two levels below the root")
    cancelled_at = time.time()
    result = run.cancel()
    assert result.status is RunStatus.CANCELLED

    def all_stopped() -> RunTree | None:
        tree = run.tree()
        done = all(n.status.final for n in nodes(tree))
        return (
            tree if done and all(n.result and len(n.result.results) for n in nodes(tree)) else None
        )

    tree = wait_for(all_stopped, 10, "every run of the tree ended")
    assert isinstance(tree, RunTree)
    assert all(n.status is RunStatus.CANCELLED for n in nodes(tree)), [
        (n.run_id, n.status) for n in nodes(tree)
    ]
    for race in [n for n in nodes(tree) if n.pattern.value == "race-then-cancel"]:
        settled = torch.get_run(race.run_id).settle(timeout_s=10)
        assert {e.status for e in settled.results} == {AgentStatus.CANCELLED}
        assert all(e.finished_at and e.finished_at < cancelled_at + 3 for e in settled.results)
    # Every solver has reported cancelled: none can leave its marker any more, and none did.
    assert list(tmp_path.iterdir()) == []


def test_a_child_cannot_outlive_its_parents_deadline(torch: Orchestrator) -> None:
    q = Query(topics=["a"], solver_ms=[30_000, 30_000], child_deadline_s=600)
    run = torch.spawn([Task("tree.lead", q)], deadline_s=3)

    def has_child() -> list[str]:
        return torch.store.children(run.id) and list(torch.store.children(run.id))

    child_ids = wait_for(has_child, 10, "the lead's child run")
    assert isinstance(child_ids, list)
    root_deadline = float(torch.store.run_fields(run.id, ["deadline_at"])[0] or 0)
    child_deadline = float(torch.store.run_fields(child_ids[0], ["deadline_at"])[0] or 0)
    assert child_deadline <= root_deadline  # asked for 600 s, got at most the parent's time
    result = run.wait(timeout_s=30)
    # The child's deadline comes first (or with the root's): the lead sees its child time out.
    assert result.status in (RunStatus.FAILED, RunStatus.TIMED_OUT), result.status

    def tree_ended() -> RunTree | None:
        tree = run.tree()
        return tree if all(n.status.final for n in nodes(tree)) else None

    tree = wait_for(tree_ended, 15, "the whole tree ended with the root's deadline")
    assert isinstance(tree, RunTree) and len(nodes(tree)) == 3
    for n in nodes(tree)[1:]:
        # Timed out, or failed because its own child timed out, or stopped by its parent.
        assert n.status is not RunStatus.SUCCEEDED, (n.run_id, n.status)
        assert n.result is not None and n.result.finished_at <= root_deadline + 3


def test_depth_limit_refuses_the_run_too_deep_naming_the_setting(torch: Orchestrator) -> None:
    run = torch.spawn([Task("tree.fan", Fan(width=1, levels=4))], deadline_s=60)
    result = run.wait(timeout_s=60)
    assert result.status is RunStatus.FAILED
    refused = [e for e in envelopes(run.tree()) if e.error and e.error.type == "TreeLimitExceeded"]
    assert len(refused) == 1
    assert "ORCH_TREE__MAX_DEPTH=3" in refused[0].error.message  # type: ignore[union-attr]
    assert len(nodes(run.tree())) == 4  # the root and three levels below it; no fourth


def test_tree_size_limit_refuses_what_would_go_over(torch: Orchestrator) -> None:
    # 1 + 15 + 15 * 15 = 241 subagents > ORCH_TREE__MAX_SUBAGENTS=200
    run = torch.spawn([Task("tree.fan", Fan(width=15, levels=2, leaf_ms=1))], deadline_s=60)
    result = run.wait(timeout_s=60)
    assert result.status is RunStatus.FAILED
    tree = run.tree()
    refused = [e for e in envelopes(tree) if e.error and e.error.type == "TreeLimitExceeded"]
    assert refused and all(
        "ORCH_TREE__MAX_SUBAGENTS=200" in (e.error.message if e.error else "") for e in refused
    )
    assert 1 + sum(n.totals.subagents for n in tree.children) <= 200


def test_a_tree_deeper_than_the_slots_completes_on_one_worker_process(
    torch: Orchestrator,
) -> None:
    # 1 + 8 + 64 = 73 async subagents on a process of 6 places: parents waiting on children
    # lend theirs, or the tree would hang at the second level.
    run = torch.spawn([Task("tree.fan", Fan(width=8, levels=2))], deadline_s=60)
    result = run.wait(timeout_s=60)
    assert result.ok, result.error
    assert result.outputs()[0]["leaves"] == 64
    tree = run.tree()
    assert tree.totals.runs == 1 + 1 + 8 and tree.totals.subagents == 73
    assert len({e.worker for e in envelopes(tree)}) == 1


def test_a_sync_parent_waits_in_its_slot_while_another_slot_runs_its_children(
    torch: Orchestrator,
) -> None:
    run = torch.spawn([Task("tree.sync_lead", SyncFan(width=2))], deadline_s=60)
    result = run.wait(timeout_s=60)
    assert result.ok, result.error
    assert result.outputs()[0]["leaves"] == 2


def test_sync_parents_that_would_hold_every_slot_are_refused_not_hung(
    torch: Orchestrator, tmp_path: Path
) -> None:
    lead = SyncFan(width=2, rendezvous_dir=str(tmp_path), parties=2)
    run = torch.spawn([Task("tree.sync_lead", lead), Task("tree.sync_lead", lead)], deadline_s=60)
    result = run.wait(timeout_s=60)
    refused = [r for r in result.results if r.error and r.error.type == "WouldDeadlock"]
    assert refused, [(r.status, r.error) for r in result.results]
    message = refused[0].error.message  # type: ignore[union-attr]
    assert "async def" in message and "--concurrency" in message and "2 worker slots" in message
    # It ended at once, not at its deadline.
    assert result.finished_at < result.created_at + 30


def test_route_runs_the_specialist_the_classifier_names(torch: Orchestrator) -> None:
    run = torch.route(Task("question", Ask(text="add 1 2 3")), via="tree.triage", deadline_s=30)
    result = run.wait(timeout_s=30)
    assert result.ok, result.error
    routed = result.outputs()[0]
    assert routed["agent"] == "tree.maths" and routed["output"] == {"by": "maths", "text": "6"}
    tree = run.tree()
    classifier, specialist = tree.children
    assert classifier.run_id == routed["classifier_run"]
    assert specialist.run_id == routed["specialist_run"]
    assert classifier.totals.tokens_spent == 35  # beside the specialist's
    assert specialist.totals.tokens_spent == 500
    assert tree.totals.tokens_spent == 535

    prose = torch.route(Task("question", Ask(text="hello")), via="tree.triage").wait(30)
    assert prose.outputs()[0]["output"] == {"by": "prose", "text": "HELLO"}


def test_a_route_naming_an_unknown_agent_fails_saying_so(torch: Orchestrator) -> None:
    result = torch.route(Task("q", Ask(text="go nowhere")), via="tree.triage").wait(30)
    assert result.status is RunStatus.FAILED
    err = result.results[0].error
    assert err is not None and err.type == "UnknownAgent"
    assert "tree.no_such_agent" in err.message and "tree.triage" in err.message
    with pytest.raises(UnknownAgent, match="no_such_classifier"):
        torch.route(Task("q", Ask(text="x")), via="no_such_classifier")


def test_a_child_runs_spend_counts_toward_the_roots_budget(torch: Orchestrator) -> None:
    q = Query(topics=["a", "b", "c", "d"], solver_ms=[3000, 3000], tokens=600)
    run = torch.spawn([Task("tree.lead", q)], deadline_s=60, max_tokens=500)
    result = run.wait(timeout_s=60)
    assert result.status is RunStatus.BUDGET_EXCEEDED, result.error
    assert result.error and "child runs included" in result.error

    def tree_ended() -> RunTree | None:
        tree = run.tree()
        return tree if all(n.status.final for n in nodes(tree)) else None

    tree = wait_for(tree_ended, 15, "every run below stopped")
    assert isinstance(tree, RunTree)
    assert all(n.status is not RunStatus.SUCCEEDED for n in nodes(tree))
    # Stopped soon after the crossing: far fewer than the 8 x 600 tokens all would spend.
    assert tree.totals.tokens_spent < 8 * 600


def test_flower_shows_a_child_runs_coordinator_under_the_subagent_that_started_it(
    tree_stack: EmbeddedStack, torch: Orchestrator
) -> None:
    port, proc, _log = launch_flower(tree_stack, "admin:tree-pw", "flower-tree")
    token = base64.b64encode(b"admin:tree-pw").decode()

    def get(path: str) -> tuple[int, dict[str, Any] | None]:
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Basic {token}"}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except (urllib.error.URLError, ConnectionError):
            return 0, None  # not serving yet

    def finished(task_id: str) -> dict[str, Any] | None:
        status, info = get(f"/api/task/info/{task_id}")
        return info if status == 200 and info and info.get("state") == "SUCCESS" else None

    def listening() -> bool:
        # Flower sees only the events sent after it connected: probe until one shows up.
        probe = torch.spawn([Task("echo", {"text": "probe"})])
        probe.wait(timeout_s=30)
        try:
            wait_for(lambda: finished(coordinator_id(probe.id)), 2, "the probe")
        except AssertionError:
            return False
        return True

    try:
        wait_for(listening, 40, "Flower listening to the workers' events")
        q = Query(topics=["a"], solver_ms=[20, 20])
        run = torch.spawn([Task("tree.lead", q)], deadline_s=60)
        result = run.wait(timeout_s=60)
        assert result.ok, result.error
        gather = result.children[0]
        info = wait_for(lambda: finished(coordinator_id(gather)), 20, "the child's coordinator")
        assert isinstance(info, dict)
        assert info["parent_id"] == result.results[0].task_id  # the lead subagent's task
        assert info["root_id"] == coordinator_id(run.id)
    finally:
        stop_flower(proc)
