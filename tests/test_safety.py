"""JSON only: a pickle message is refused, not executed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from kombu import Connection

from orchestrator import EmbeddedStack, Orchestrator, Task
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_pickle_message_is_refused_not_executed(
    stack: EmbeddedStack, orch: Orchestrator, tmp_marker: Callable[[str], str]
) -> None:
    marker = tmp_marker("pickled")
    task_id = f"pickle-{uuid.uuid4().hex[:8]}"
    body = (
        (),
        {
            "run_id": "x",
            "index": 0,
            "payload": {"seconds": 0, "marker": marker, "mode": "cpu"},
            "meta": {},
        },
        {"callbacks": None, "errbacks": None, "chain": None, "chord": None},
    )
    before = orch.store.dead_letters(1).total
    # On the deployment's queue, under its key prefix as every kombu key.
    options = {"global_keyprefix": orch.store.keys.kombu_prefix}
    with Connection(stack.url, transport_options=options) as conn:
        producer = conn.Producer(serializer="pickle")
        producer.publish(
            body,
            routing_key="agents.work",
            headers={
                "lang": "py",
                "task": "agents.work",
                "id": task_id,
                "root_id": task_id,
                "parent_id": None,
                "group": None,
                "argsrepr": "()",
                "kwargsrepr": "{}",
            },
        )
    wait_for(
        lambda: orch.store.dead_letters(1).total > before,
        15,
        "a worker to refuse the pickle message (dead-lettered)",
    )
    latest = orch.store.dead_letters(1).latest[0]
    assert "ContentDisallowed" in latest.reason and latest.task_id == task_id, latest
    # The workers are still healthy and the refused message left nothing behind.
    res = orch.spawn([Task("echo", {"text": "after"})]).wait(timeout_s=30)
    assert res.ok
    assert not Path(marker).exists()


def test_app_accepts_json_only(orch: Orchestrator) -> None:
    conf = orch.app.conf
    assert conf.accept_content == ["json"]
    assert conf.task_serializer == "json"
    assert conf.result_accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_send_task_events and conf.task_track_started
    assert conf.broker_transport_options["visibility_timeout"] > orch.settings.max_deadline_s
