"""What arrives on the coordinator's queue is input: a request that cannot be accepted ends its
own run with the reason (never another run), the server's clock sets a run's creation, and a
coordinator that dies while sending a run loses nothing (real processes)."""

from __future__ import annotations

import os
import signal
import time
import uuid
from typing import Any

import pytest

from orchestrator import Orchestrator, RunStatus, Task
from orchestrator.events import read_events
from tests.conftest import _stack, wait_for
from workers.names import COORDINATOR_TASK

pytestmark = pytest.mark.integration


def _send(o: Orchestrator, request: dict[str, Any]) -> None:
    """Put a request on the coordinator queue as any client could (no record written)."""
    o.app.send_task(COORDINATOR_TASK, args=[request], queue=o.settings.coordinator_queue)


def _new_id() -> str:
    return f"wire-{uuid.uuid4().hex[:10]}"


def _request(run_id: str, **extra: Any) -> dict[str, Any]:
    return {
        "run_id": run_id,
        "pattern": "parallel-spawn",
        "tasks": [{"agent": "echo", "payload": {"text": "hi"}}],
        **extra,
    }


@pytest.mark.parametrize(
    "shape",
    ["too_many_tasks", "infinite_deadline", "bad_pattern"],
)
def test_a_request_that_cannot_be_accepted_ends_its_run_failed(
    orch: Orchestrator, shape: str
) -> None:
    run_id = _new_id()
    bad = {
        "too_many_tasks": _request(run_id, tasks=[{"agent": "echo"}] * 20_000),
        "infinite_deadline": _request(run_id, deadline_s=float("inf")),
        "bad_pattern": _request(run_id, pattern="race-then-merge"),
    }[shape]
    _send(orch, bad)
    wait_for(lambda: orch.store.run_exists(run_id), 15, "the refused run's record")
    res = orch.get_run(run_id).wait(timeout_s=10)  # its done stream has the entry
    assert res.status is RunStatus.FAILED
    assert res.error is not None and "malformed orchestration request" in res.error


def test_a_malformed_request_naming_another_live_run_leaves_it_alone(orch: Orchestrator) -> None:
    live = orch.spawn([Task("echo", {"text": "live", "spin_s": 1.0})], deadline_s=60)
    _send(orch, _request(live.id, pattern="no-such-pattern", created_at=1.0))
    res = live.wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error


def test_the_server_clock_sets_an_unrecorded_runs_creation(orch: Orchestrator) -> None:
    run_id = _new_id()
    ten_years = time.time() + 10 * 365 * 86_400
    _send(orch, _request(run_id, created_at=ten_years, deadline_s=30))
    res = orch.get_run(run_id).wait(timeout_s=30) if _recorded(orch, run_id) else None
    assert res is not None and res.status is RunStatus.SUCCEEDED, res
    created_at, deadline_at = orch.store.run_fields(run_id, ["created_at", "deadline_at"])
    assert abs(float(created_at or 0) - time.time()) < 60
    assert float(deadline_at or 0) - float(created_at or 0) == pytest.approx(30)


def _recorded(o: Orchestrator, run_id: str) -> bool:
    return bool(wait_for(lambda: o.store.run_exists(run_id), 15, "the run's record"))


def test_a_coordinator_killed_mid_send_loses_nothing() -> None:
    """kill -9 of the coordinator while it sends a 2000-member spawn: another coordinator goes
    on from the last send batch it recorded, within seconds (not after the visibility
    timeout), and every member runs."""
    s = _stack(name="midsend", workers=1, concurrency=4)
    o = Orchestrator(broker_url=s.url, key_prefix=s.key_prefix)
    try:
        n = 2000
        run = o.spawn(
            [Task("echo", {"text": f"m{i}"}) for i in range(n)], deadline_s=120, preflight="off"
        )
        wait_for(
            lambda: int(o.store.record(run.id).get("sent") or 0) >= 64, 30, "a first send batch"
        )
        coordinator = s.procs["coordinator"]
        os.killpg(coordinator.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        coordinator.wait(timeout=10)
        rec = o.store.record(run.id)
        assert "expanded_at" not in rec, "the send finished before the kill: nothing to prove"
        s.start_process("coordinator2", ["coordinator", "--hostname", "coordinator2@%h"])
        res = run.wait(timeout_s=90)
        assert res.status is RunStatus.SUCCEEDED, res.error
        assert len(res.results) == n and all(r.output for r in res.results)
        assert time.monotonic() - killed_at < 60
        kinds = [e.type for e in read_events(o.store, run.id)]
        assert "expansion_resumed" in kinds
    finally:
        o.close()
        s.stop()


def test_one_unusable_record_does_not_stop_the_sweeper_for_the_others(orch: Orchestrator) -> None:
    bad = _new_id()
    orch.store.r.hset(orch.store.keys.run(bad), mapping={"run_id": bad, "n": "1"})
    orch.store.r.expire(orch.store.keys.run(bad), 60)
    orch.store.r.zadd(orch.store.keys.deadlines, {bad: time.time() - 10})
    run = orch.spawn([Task("echo", {"text": "slow", "spin_s": 3.0})], deadline_s=0.5)
    # Not run.wait(): a waiting client ends an overdue run itself; the sweeper must do it.
    wait_for(lambda: run.status().status is RunStatus.TIMED_OUT, 15, "the sweeper to end it")
    assert orch.store.r.zscore(orch.store.keys.deadlines, bad) is None


def test_a_request_too_deep_to_decode_ends_its_unrecorded_run(orch: Orchestrator) -> None:
    """10,000 levels of JSON cannot be decoded at all; the message still names its run (its id
    is ``<run>.coordinator``), so that run ends failed instead of leaving waiters waiting."""
    import base64
    import json

    from tests.nonpython_client import celery_message

    run_id = _new_id()
    message = celery_message(_request(run_id), orch.settings.coordinator_queue)
    deep = '{"a":' * 10_000 + "1" + "}" * 10_000
    head = json.dumps({"run_id": run_id, "pattern": "parallel-spawn"})[:-1]
    body = f'[[{head}, "tasks": [{{"agent": "echo", "payload": {deep}}}]}}], {{}}, {{}}]'

    message["body"] = base64.b64encode(body.encode()).decode()
    orch.store.r.lpush(orch.store.keys.queue(orch.settings.coordinator_queue), json.dumps(message))
    wait_for(lambda: orch.store.run_exists(run_id), 15, "the run's record")
    res = orch.get_run(run_id).wait(timeout_s=10)
    assert res.status is RunStatus.FAILED
    assert res.error is not None and "could not be accepted" in res.error
