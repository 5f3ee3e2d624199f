"""Bad input gets a clear error at submit, and nothing is enqueued."""

from __future__ import annotations

import pytest

from orchestrator import (
    BrokerUnavailable,
    EmbeddedStack,
    InvalidPayload,
    InvalidRequest,
    Orchestrator,
    RunNotFound,
    RunStatus,
    Settings,
    Task,
    UnknownAgent,
)
from orchestrator.embedded import free_port
from tests.conftest import queued, recorded_runs

pytestmark = pytest.mark.integration


def test_unknown_agent_fails_at_submit_with_nothing_enqueued(idle_orch: Orchestrator) -> None:
    runs_before = recorded_runs(idle_orch)
    with pytest.raises(UnknownAgent) as info:
        idle_orch.spawn([Task("echo", {"text": "a"}), Task("no_such_agent", {"x": 1})])
    msg = str(info.value)
    assert "no_such_agent" in msg and "echo" in msg and "ORCH_AGENT_MODULES" in msg
    assert queued(idle_orch) == 0
    assert recorded_runs(idle_orch) == runs_before
    # The same client does enqueue a valid request: the counts above could have moved.
    idle_orch.spawn([Task("echo", {"text": "a"})])
    assert queued(idle_orch) == 1
    assert recorded_runs(idle_orch) == runs_before + 1


def test_invalid_payload_fails_at_submit_with_nothing_enqueued(idle_orch: Orchestrator) -> None:
    runs_before = recorded_runs(idle_orch)
    with pytest.raises(InvalidPayload) as info:
        idle_orch.spawn([Task("echo", {"text": "a"}), Task("echo", {"txt": "typo"})])
    msg = str(info.value)
    assert "task #1" in msg and "'text' is a required property" in msg
    with pytest.raises(InvalidPayload):
        idle_orch.spawn([Task("echo", {"text": 42})])
    assert queued(idle_orch) == 0
    assert recorded_runs(idle_orch) == runs_before


def test_unknown_merger_and_validator_fail_at_submit(idle_orch: Orchestrator) -> None:
    with pytest.raises(UnknownAgent, match="merger 'nope'"):
        idle_orch.gather([Task("echo", {"text": "a"})], merge="nope")
    with pytest.raises(UnknownAgent, match="validator 'nope'"):
        idle_orch.race([Task("echo", {"text": "a"})], validate="nope")
    assert queued(idle_orch) == 0


def test_malformed_requests_are_refused(idle_orch: Orchestrator) -> None:
    with pytest.raises(InvalidRequest, match="at least 1"):
        idle_orch.spawn([])
    with pytest.raises(InvalidRequest, match="quorum 5 is larger"):
        idle_orch.gather([Task("echo", {"text": "a"})], merge="join", quorum=5)
    with pytest.raises(InvalidRequest, match="ORCH_MAX_DEADLINE_S"):
        idle_orch.spawn([Task("echo", {"text": "a"})], deadline_s=10**7)
    with pytest.raises(InvalidRequest, match="Task objects"):
        idle_orch.spawn([{"agent": "echo"}])  # type: ignore[list-item]
    assert queued(idle_orch) == 0


def test_broker_down_is_a_clear_error() -> None:
    port = free_port()  # nothing listens there
    o = Orchestrator(broker_url=f"redis://127.0.0.1:{port}/0")
    with pytest.raises(BrokerUnavailable) as info:
        o.spawn([Task("echo", {"text": "a"})])
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "orchestrator up" in str(info.value)


def test_password_is_not_shown_in_errors() -> None:
    port = free_port()
    o = Orchestrator(broker_url=f"redis://:hunter2@127.0.0.1:{port}/0")
    with pytest.raises(BrokerUnavailable) as info:
        o.agents()
    assert "hunter2" not in str(info.value)


def test_unknown_run_id(orch: Orchestrator) -> None:
    with pytest.raises(RunNotFound, match="no run 'nope'"):
        orch.get_run("nope")


def test_no_broker_configured_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ORCH_BROKER_URL", raising=False)
    from orchestrator import ConfigError

    with pytest.raises(ConfigError, match="ORCH_BROKER_URL"):
        Orchestrator()


def test_broker_down_while_a_client_expands_its_run(stack: EmbeddedStack) -> None:
    """State Redis up, broker down: the run the client was expanding itself ends failed, saying
    why, and submit raises BrokerUnavailable as it does when the coordinator is unreachable."""
    dead = f"redis://127.0.0.1:{free_port()}/0"
    o = Orchestrator(
        Settings(
            broker_url=dead,
            state_url=stack.url,
            key_prefix=stack.key_prefix,
            client_expand_max_n=4,
        )
    )
    try:
        runs_before = recorded_runs(o)
        with pytest.raises(BrokerUnavailable) as info:
            o.spawn([Task("echo", {"text": "a"})], preflight="off")
        assert "127.0.0.1" in str(info.value)
        assert recorded_runs(o) == runs_before + 1  # recorded before the send, then ended
        [run_id] = o.store.recent_runs(1)
        result = o.get_run(run_id).wait(timeout_s=5)
        assert result.status is RunStatus.FAILED
        assert result.error is not None and "broker failed while the subtasks" in result.error
    finally:
        o.close()
