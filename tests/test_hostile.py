"""Hostile input: each gets a clear error or is rejected, and nothing else is harmed."""

from __future__ import annotations

import uuid

import pytest

from orchestrator import (
    AgentStatus,
    EmbeddedStack,
    InvalidRequest,
    Orchestrator,
    RunStatus,
    Settings,
    Task,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def _healthy(orch: Orchestrator) -> None:
    res = orch.spawn([Task("echo", {"text": "still fine"})]).wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error


def test_oversized_request_is_refused_at_submit(stack: EmbeddedStack) -> None:
    o = Orchestrator(
        Settings(broker_url=stack.url, key_prefix=stack.key_prefix, max_request_bytes=10_000)
    )
    with pytest.raises(InvalidRequest, match="ORCH_MAX_REQUEST_BYTES"):
        o.spawn([Task("echo", {"text": "x" * 20_000})])
    o.close()


def test_malformed_requests_sent_to_the_coordinator_are_rejected(
    stack: EmbeddedStack, orch: Orchestrator
) -> None:
    garbage = [
        "not a dict",
        {"pattern": "parallel-spawn"},
        {"pattern": "nope", "tasks": [{"agent": "echo"}]},
        {"pattern": "parallel-spawn", "tasks": [{"agent": "echo", "payload": {}}], "x": 1},
    ]
    before = stack.log("coordinator").count("malformed orchestration request")
    for body in garbage:
        orch.app.send_task("orchestrator.run", args=[body], queue="orchestrator")
    wait_for(
        lambda: (
            stack.log("coordinator").count("malformed orchestration request")
            >= before + len(garbage)
        ),
        15,
        "the coordinator to reject every malformed request",
    )
    _healthy(orch)


def test_invalid_payload_sent_past_the_client_fails_the_run_clearly(orch: Orchestrator) -> None:
    """A non-Python client that skips validation still gets a clear, failed run."""
    run_id = uuid.uuid4().hex[:12]
    orch.app.send_task(
        "orchestrator.run",
        args=[
            {
                "run_id": run_id,
                "pattern": "parallel-spawn",
                "tasks": [{"agent": "echo", "payload": {"text": 5}}],
            }
        ],
        queue="orchestrator",
    )
    res = wait_for(lambda: orch.store.result(run_id), 15, "the run to be failed")
    assert res.status is RunStatus.FAILED  # type: ignore[attr-defined]
    assert "InvalidPayload" in res.error and "task #0" in res.error  # type: ignore[attr-defined]


def test_unknown_task_name_is_never_run(stack: EmbeddedStack, orch: Orchestrator) -> None:
    # Not one of ours by its name's shape: dropped to the dead-letter list.
    orch.app.send_task("elsewhere.no_such_thing", kwargs={"run_id": "x"}, queue="agents")
    wait_for(
        lambda: any("elsewhere.no_such_thing" in stack.log(n) for n in ("worker1", "worker2")),
        15,
        "a worker to report the unregistered task",
    )
    # One of ours by shape, but no worker has it: handed back to its own queue, where it waits
    # for a worker that has it (scaling from zero) instead of being lost.
    orch.app.send_task("agents.no_such_thing", kwargs={"run_id": "x"}, queue="agents")
    waiting = orch.store.keys.queue("agents.no_such_thing")
    try:
        wait_for(lambda: orch.store.r.llen(waiting) == 1, 15, "the task to be handed back")
    finally:
        orch.store.r.delete(waiting)
    _healthy(orch)


def test_race_validator_that_raises_marks_that_racer_invalid(orch: Orchestrator) -> None:
    tasks = [Task("echo", {"text": "boom"}), Task("echo", {"text": "good one", "spin_s": 0.3})]
    res = orch.race(tasks, validate="explodes").wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    assert res.winner is not None and res.winner.index == 1
    bad = res.results[0]
    assert bad.status is AgentStatus.INVALID
    assert bad.error is not None and "validator blew up on purpose" in bad.error.message
    assert bad.error.hint and "should return True/False" in bad.error.hint


def test_message_for_an_unknown_run_does_no_work(orch: Orchestrator) -> None:
    result = orch.app.send_task(
        "agents.echo",
        queue="agents.echo",
        kwargs={
            "run_id": "ghost",
            "index": 0,
            "payload": {"text": "x"},
            "meta": {"pattern": "parallel-spawn", "n": 1, "queued_at": 0, "deadline_at": 4e9},
        },
    )
    # The task fails (Flower shows FAILURE) with the envelope's error type, message and hint.
    wait_for(result.ready, 15, "the worker's answer")
    assert result.state == "FAILURE"
    assert "#0 echo error: RunNotFound: run ghost has no record" in str(result.result)
    assert "ORCH_KEY_PREFIX" in str(result.result)


def test_a_false_payloads_checked_claim_still_fails_clearly(orch: Orchestrator) -> None:
    """The coordinator trusts payloads_checked to skip its own check; the worker still catches
    the bad payload and says so in the envelope."""
    run_id = uuid.uuid4().hex[:12]
    orch.app.send_task(
        "orchestrator.run",
        args=[
            {
                "run_id": run_id,
                "pattern": "parallel-spawn",
                "payloads_checked": True,
                "tasks": [
                    {"agent": "echo", "payload": {"text": 5}},
                    {"agent": "echo", "payload": {"text": "fine"}},
                ],
            }
        ],
        queue="orchestrator",
    )
    res = wait_for(lambda: orch.store.result(run_id), 15, "the run to end")
    assert res.status is RunStatus.FAILED  # type: ignore[attr-defined]
    bad, good = res.results  # type: ignore[attr-defined]
    assert bad.status is AgentStatus.ERROR and bad.error.type == "InvalidPayload"
    assert "text" in bad.error.message
    assert good.status is AgentStatus.OK
