"""Every subagent ends in an envelope, whatever its agent returns, raises or does to its own
process; so no run waits for its deadline because something broke (real workers)."""

from __future__ import annotations

import time

import pytest

from orchestrator import AgentStatus, Orchestrator, RunStatus, Task

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("mode", ["object", "bytes"])
def test_output_json_cannot_hold_is_an_invalid_envelope(orch: Orchestrator, mode: str) -> None:
    run = orch.spawn([Task("misbehave", {"mode": mode})], deadline_s=60, preflight="off")
    started = time.monotonic()
    res = run.wait(timeout_s=30)
    assert time.monotonic() - started < 15, "the run waited for its deadline"
    env = res.results[0]
    assert env.status is AgentStatus.INVALID, env
    assert env.error is not None and env.error.type == "InvalidOutput"
    assert "JSON" in env.error.message
    assert res.status is RunStatus.FAILED


def test_a_verdict_that_is_not_a_bool_makes_the_candidate_invalid(orch: Orchestrator) -> None:
    run = orch.race(
        [Task("misbehave", {"mode": "fine"})], validate="unreadable", deadline_s=60, preflight="off"
    )
    res = run.wait(timeout_s=30)
    env = res.results[0]
    assert env.status is AgentStatus.INVALID, env
    assert env.error is not None and "no truth value" in env.error.message
    assert res.status is RunStatus.FAILED and res.winner is None


def test_an_agent_that_kills_its_own_process_is_given_up_after_max_attempts(
    orch: Orchestrator,
) -> None:
    """Its message comes back each time the pool process dies (acks late, reject on worker
    lost); after ORCH_MAX_ATTEMPTS deliveries it gets an error envelope and the run ends."""
    run = orch.spawn(
        [Task("misbehave", {"mode": "die"}), Task("misbehave", {"mode": "fine"})],
        deadline_s=90,
        preflight="off",
    )
    res = run.wait(timeout_s=60)
    dead, fine = res.results
    assert fine.status is AgentStatus.OK
    assert dead.status is AgentStatus.ERROR, dead
    assert dead.error is not None and dead.error.type == "WorkerLost"
    assert dead.attempt == orch.settings.max_attempts + 1
    assert res.status is RunStatus.FAILED
    assert "deadline" not in (res.error or "")
