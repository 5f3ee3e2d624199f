"""gather(quorum=k, early=True) merges as soon as k valid outputs arrived and stops the rest;
``run.as_completed()`` / ``run.iter_completed()`` yield envelopes as they finish. Real workers
(the session stack: two prefork workers, two slots each)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import pytest

from orchestrator import AgentResult, AgentStatus, Orchestrator, Pattern, RunStatus, Task
from tests.conftest import wait_for
from workers.errors import InvalidRequest

pytestmark = pytest.mark.integration


def _work(marker: str, seconds: float) -> Task:
    return Task("work", {"seconds": seconds, "marker": marker, "mode": "sleep"})


def test_early_needs_a_quorum(orch: Orchestrator) -> None:
    tasks = [Task("echo", {"text": "a"}), Task("echo", {"text": "b"})]
    with pytest.raises(InvalidRequest, match="early=True needs quorum"):
        orch.request(Pattern.GATHER, tasks, merge="join", early=True)
    with pytest.raises(InvalidRequest, match="apply only to gather-then-merge"):
        orch.request(Pattern.RACE, tasks, quorum=1, early=True)


def test_an_early_quorum_merges_and_stops_the_stragglers(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    fast = [tmp_marker("fast0"), tmp_marker("fast1")]
    slow = [tmp_marker("slow0"), tmp_marker("slow1")]
    tasks = [_work(fast[0], 0.05), _work(fast[1], 0.05), _work(slow[0], 30), _work(slow[1], 30)]
    run = orch.gather(tasks, merge="collect_done", quorum=2, early=True, deadline_s=60)
    res = run.wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert sorted(res.merged["texts"]) == sorted(fast)
    assert res.report.early_quorum == 2
    settled = run.settle(timeout_s=15)
    stragglers = settled.results[2:]
    assert all(r.status in (AgentStatus.CANCELLED, AgentStatus.SKIPPED) for r in stragglers)
    assert not any(os.path.exists(m) for m in slow)  # their work never finished
    types = [f.get("type") for _, f in orch.store.events_after(run.id)]
    # Every member reported (the last report did not send the merger again): one merge.
    assert orch.store.reported_count(run.id) == 4
    assert types.count("quorum_reached") == 1 and types.count("merged") == 1


def test_an_early_quorum_not_met_fails_after_every_member_reported(orch: Orchestrator) -> None:
    tasks = [
        Task("echo", {"text": "a"}),
        Task("echo", {"text": "b", "fail": True}),
        Task("echo", {"text": "c", "fail": True}),
    ]
    res = orch.gather(tasks, merge="join", quorum=2, early=True, deadline_s=60).wait(30)
    assert res.status is RunStatus.FAILED
    assert res.error is not None and "quorum not met: 1 of 3" in res.error


def _finishing_order(envs: list[AgentResult]) -> None:
    stamps = [e.finished_at or 0.0 for e in envs]
    assert stamps == sorted(stamps), [(e.index, e.finished_at) for e in envs]


def test_iter_completed_yields_envelopes_as_they_finish(orch: Orchestrator) -> None:
    spins = [0.6, 0.0, 0.3, 0.05]
    tasks = [Task("echo", {"text": f"t{i}", "spin_s": s}) for i, s in enumerate(spins)]
    run = orch.spawn(tasks, deadline_s=60)
    got = list(run.iter_completed(timeout_s=30))
    assert sorted(e.index for e in got) == [0, 1, 2, 3]
    _finishing_order(got)
    assert run.result() is not None  # it ended with the run
    assert all(e.status is AgentStatus.OK for e in got)


def test_as_completed_yields_envelopes_as_they_finish(orch: Orchestrator) -> None:
    async def main() -> tuple[list[AgentResult], bool]:
        tasks = [Task("echo", {"text": f"a{i}", "spin_s": s}) for i, s in enumerate([0.4, 0, 0.2])]
        run = await orch.spawn_async(tasks, deadline_s=60)
        got = [env async for env in run.as_completed(timeout_s=30)]
        return got, run.result() is not None

    got, ended = asyncio.run(main())
    assert sorted(e.index for e in got) == [0, 1, 2]
    _finishing_order(got)
    assert ended


def test_as_completed_of_an_early_quorum_ends_with_the_run(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    slow = tmp_marker("slow")
    tasks = [Task("work", {"seconds": 0.05, "marker": tmp_marker(f"f{i}")}) for i in range(2)]
    tasks.append(_work(slow, 30))

    async def main() -> tuple[str, list[AgentResult]]:
        run = await orch.gather_async(
            tasks, merge="collect_done", quorum=2, early=True, deadline_s=60
        )
        return run.id, [env async for env in run.as_completed(timeout_s=30)]

    run_id, got = asyncio.run(main())
    # The two that made the quorum (the straggler may be stopped before or after the end).
    assert {e.index for e in got if e.status is AgentStatus.OK} == {0, 1}
    assert orch.store.result(run_id) is not None
    wait_for(lambda: orch.store.reported_count(run_id) == 3, 15, "the straggler to stop")
    straggler = orch.store.envelope(run_id, 2)
    assert straggler is not None and straggler.status is not AgentStatus.OK
    assert not os.path.exists(slow)


def test_iter_completed_times_out_while_the_run_goes_on(
    orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    from workers.errors import RunTimedOut

    run = orch.spawn([_work(tmp_marker("long"), 30)], deadline_s=60)
    with pytest.raises(RunTimedOut):
        list(run.iter_completed(timeout_s=0.5))
    run.cancel()
