"""Flower tells the truth about async subagents too: their messages run on the worker's event
loop, not through Celery's tracer, yet an ok one is SUCCESS, a failed one FAILURE (with its
error) and a race's stopped loser REVOKED, as for sync agents."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from orchestrator import AgentStatus, EmbeddedStack, Orchestrator, Task
from tests.conftest import AGENT_MODULES, _stack, launch_flower, stop_flower, wait_for
from tests.test_flower import FINAL_STATES, PASSWORD, USER, Flower

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def async_stack() -> Iterator[EmbeddedStack]:
    s = _stack(
        name="asyncflower", workers=1, concurrency=1,
        agent_modules=[*AGENT_MODULES, "tests.agents_async"],
    )  # fmt: skip
    try:
        yield s
    finally:
        s.stop()


def _state(fl: Flower, task_id: str) -> dict[str, object] | None:
    status, body = fl.get(f"/api/task/info/{task_id}")
    if status != 200:
        return None
    info: dict[str, object] = json.loads(body)
    return info if info.get("state") in FINAL_STATES else None


def _serving(fl: Flower) -> bool:
    try:
        return fl.get("/healthcheck", auth=False)[0] == 200
    except OSError:
        return False


def test_flower_shows_async_subagents_states(async_stack: EmbeddedStack) -> None:
    port, proc, log = launch_flower(async_stack, f"{USER}:{PASSWORD}", "asyncflower")
    fl = Flower(f"http://127.0.0.1:{port}", log)
    o = Orchestrator(broker_url=async_stack.url, key_prefix=async_stack.key_prefix)
    try:
        wait_for(lambda: _serving(fl), 20, "Flower to serve")
        for _ in range(10):  # Flower listens for events a little after it serves
            probe = o.spawn([Task("async.nap", {"seconds": 0})])
            probe.wait(timeout_s=30)
            try:
                wait_for(lambda p=probe: _state(fl, f"{p.id}.0"), 2, "the probe")
                break
            except AssertionError:
                continue
        naps = [{"seconds": 0}, {"seconds": 0, "fail": True}]
        mixed = o.spawn([Task("async.nap", p) for p in naps]).wait(timeout_s=30)
        # The winner naps a little, so the loser has usually started (cancelled); a loaded
        # machine may start it after the win (skipped): Flower shows both REVOKED.
        race = o.race([Task("async.nap", p) for p in ({"seconds": 0.3}, {"seconds": 30})])
        raced = race.settle(timeout_s=30)
        ok, failed = (
            wait_for(lambda e=e: _state(fl, e.task_id), 10, "Flower") for e in mixed.results
        )
        assert isinstance(ok, dict) and ok["state"] == "SUCCESS"
        assert isinstance(failed, dict) and failed["state"] == "FAILURE"
        assert "RuntimeError: asked to fail" in str(failed["exception"])
        assert raced.results[1].status in (AgentStatus.CANCELLED, AgentStatus.SKIPPED)
        loser = wait_for(lambda: _state(fl, raced.results[1].task_id), 10, "the loser")
        assert isinstance(loser, dict) and loser["state"] == "REVOKED"
    finally:
        o.close()
        stop_flower(proc)
