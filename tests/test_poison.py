"""Nothing on the wire takes a process down: whatever any broker client pushes onto our queues is
dropped to the dead-letter list (once, redacted) or run only if it is one of our tasks, and the
remote-control commands that stop a worker or change its queues are refused unless allowed.

One stack of its own (a coordinator and one worker), so poisoned queues disturb no other test.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from orchestrator import EmbeddedStack, Orchestrator, RunStatus, Task
from orchestrator.cli import main
from tests.conftest import _stack, wait_for

pytestmark = pytest.mark.integration

#: Payload text that must never reach a log.
SECRET = f"poison-payload-{uuid.uuid4().hex}"
QUEUES = ("orchestrator", "agents")


def _envelope(queue: str, headers: dict[str, Any], body: str | None = None) -> dict[str, Any]:
    """A kombu envelope (Redis transport) as tests/nonpython_client.py builds one."""
    payload = [[{"text": SECRET}], {"secret": SECRET}, {}]
    tag = str(uuid.uuid4())
    return {
        "body": body
        if body is not None
        else base64.b64encode(json.dumps(payload).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"lang": "py", "argsrepr": "()", "kwargsrepr": "{}", **headers},
        "properties": {
            "correlation_id": tag,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    }


def _poison(queue: str) -> list[tuple[str, str]]:
    """(item, the reason it must be dropped for) of every poison shape, for one queue."""
    # A task each process runs: only the missing id is wrong with the no-id envelope.
    ours = "orchestrator.run" if queue == "orchestrator" else "agents.echo"
    task = {"task": ours, "id": f"poison-{uuid.uuid4().hex[:8]}"}
    data = _envelope(queue, task)["body"].rstrip("=")
    bad_body = data[: 4 * (len(data) // 4 - 1) + 1]  # one data character too many: b64 fails
    not_json = base64.b64encode(f"not JSON {SECRET}".encode()).decode()
    return [
        (f"plain text {SECRET}", "not JSON"),
        (json.dumps({"note": SECRET, **_envelope(queue, task)})[:90], "not JSON"),
        ("[]", "not a kombu envelope"),
        ('"x"', "not a kombu envelope"),
        ("42", "not a kombu envelope"),
        (json.dumps(_envelope(queue, task, body=bad_body)), "not a kombu envelope"),
        (json.dumps(_envelope(queue, {"task": ours})), "no id header"),
        (json.dumps(_envelope(queue, {**task, "task": "celery.accumulate"})), "not one of ours"),
        (json.dumps(_envelope(queue, {**task, "task": "elsewhere.no_such"})), "unknown task"),
        # And a few more that reach further before they fail.
        (json.dumps({**_envelope(queue, task), "headers": None}), "not a kombu envelope"),
        (json.dumps(_envelope(queue, {**task, "task": [ours]})), "task header is not a string"),
        (json.dumps(_envelope(queue, task, body=not_json)), "body cannot be decoded"),
        (json.dumps(_envelope(queue, {**task, "timelimit": "abc"})), "timelimit header"),
    ]


def _body(item: str) -> str:
    """The (base64) body of an item that is a JSON envelope, else ''."""
    try:
        body = json.loads(item)["body"]
    except (ValueError, TypeError, KeyError):
        return ""
    return body if isinstance(body, str) else ""


@pytest.fixture(scope="module")
def poisoned() -> Iterator[EmbeddedStack]:
    s = _stack(name="poison", workers=1, concurrency=2, pool="prefork")
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def porch(poisoned: EmbeddedStack) -> Iterator[Orchestrator]:
    o = Orchestrator(broker_url=poisoned.url, key_prefix=poisoned.key_prefix)
    yield o
    o.close()


def _host(s: EmbeddedStack, name: str) -> str:
    return s.online()[name].hostname


def test_poison_on_either_queue_is_dead_lettered_and_every_process_goes_on(
    poisoned: EmbeddedStack, porch: Orchestrator, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = redis.Redis.from_url(poisoned.url)
    before = porch.store.dead_letters(1).total
    items = [(q, item, why) for q in QUEUES for item, why in _poison(q)]
    try:
        for queue, item, _ in items:
            raw.lpush(porch.store.keys.queue(queue), item)  # the queue's list, under the prefix
        wait_for(
            lambda: porch.store.dead_letters(1).total - before >= len(items),
            30,
            f"{len(items)} dead letters",
        )
        report = porch.store.dead_letters(len(items))
        # celery.accumulate did not run: it would have stored a result.
        assert not raw.keys(f"{porch.store.keys.kombu_prefix}celery-task-meta-poison-*")
    finally:
        raw.close()
    assert report.total - before == len(items)
    for queue in QUEUES:
        wanted = Counter(why for q, _, why in items if q == queue)
        got = Counter(
            next((why for why in wanted if d.reason.startswith(why)), d.reason)
            for d in report.latest
            if d.queue == queue
        )
        assert got == wanted, queue
    assert all(d.size_bytes > 0 and d.host for d in report.latest)
    assert not any(SECRET in json.dumps(d.__dict__) for d in report.latest)
    for name in ("coordinator", "worker1"):
        assert poisoned.procs[name].poll() is None, poisoned.tail(name)
    res = porch.spawn([Task("echo", {"text": "after the poison"})]).wait(timeout_s=30)
    assert res.status is RunStatus.SUCCEEDED, res.error
    bodies = [_body(item)[:24] for _, item, _ in items if _body(item)]
    for name in ("coordinator", "worker1"):
        log = poisoned.log(name)
        assert SECRET not in log, f"{name} logged a payload"
        assert not [b for b in bodies if b in log], f"{name} logged a message body"
        assert "Connection to broker lost" not in log, f"{name} restarted its consumer"
        assert log.count("to the dead-letter list") == len(items) // len(QUEUES), name  # once each
    monkeypatch.setenv("ORCH_BROKER_URL", poisoned.url)
    monkeypatch.setenv("ORCH_KEY_PREFIX", poisoned.key_prefix)
    out = CliRunner().invoke(main, ["status", "--limit", "1"])
    assert out.exit_code == 0, out.output
    assert f"dead letters: {report.total}" in out.output
    assert all(d.reason in out.output for d in report.latest[:5]), out.output  # the latest
    assert SECRET not in out.output


def _wait_listening(o: Orchestrator, host: str) -> None:
    # A heartbeat comes before the control node listens (pub/sub: nothing is kept for it).
    wait_for(lambda: o.app.control.ping(destination=[host], timeout=0.5), 15, f"{host}'s pidbox")


def _queues(o: Orchestrator, host: str) -> list[str]:
    replies = o.app.control.inspect(destination=[host], timeout=2.0).active_queues() or {}
    return sorted(q["name"] for q in replies.get(host, []))


def test_remote_shutdown_and_add_consumer_are_refused_unless_allowed(
    poisoned: EmbeddedStack, porch: Orchestrator
) -> None:
    host = _host(poisoned, "worker1")
    control = porch.app.control
    _wait_listening(porch, host)
    queues = _queues(porch, host)
    assert "agents" in queues and "orchestrator" not in queues
    replies = control.broadcast(
        "add_consumer", arguments={"queue": "orchestrator"}, destination=[host], reply=True
    )
    assert "refused" in replies[0][host]["error"], replies
    replies = control.broadcast("shutdown", destination=[host], reply=True, timeout=2.0)
    assert "refused" in replies[0][host]["error"], replies
    assert control.ping(destination=[host], timeout=2.0), "the worker stopped answering"
    assert poisoned.procs["worker1"].poll() is None
    assert _queues(porch, host) == queues
    assert control.inspect(destination=[host], timeout=2.0).registered(), "inspect still works"

    poisoned.extra_env["ORCH_REMOTE_CONTROL__ALLOW"] = "shutdown,add_consumer"
    try:
        poisoned.start_worker("allowing", concurrency=1)
        poisoned.wait_ready(["allowing"], 30)
    finally:
        poisoned.extra_env.pop("ORCH_REMOTE_CONTROL__ALLOW")
    other = _host(poisoned, "allowing")
    _wait_listening(porch, other)
    spare = f"spare-{uuid.uuid4().hex[:6]}"
    replies = control.broadcast(
        "add_consumer", arguments={"queue": spare}, destination=[other], reply=True
    )
    assert "ok" in replies[0][other], replies
    assert spare in _queues(porch, other)
    control.broadcast("shutdown", destination=[other])
    proc = poisoned.procs["allowing"]
    wait_for(lambda: proc.poll() is not None, 30, "the allowing worker to shut down")
    assert poisoned.procs["worker1"].poll() is None


def test_a_worker_whose_consumer_crashes_exits_non_zero(poisoned: EmbeddedStack) -> None:
    # systemd's Restart=on-failure restarts only a process that exits non-zero.
    poisoned.extra_env["ORCH_AGENT_MODULES"] = "workers.agents,tests.crashing_consumer"
    try:
        poisoned.start_worker("crashing", concurrency=1)
    finally:
        poisoned.extra_env.pop("ORCH_AGENT_MODULES")
    proc = poisoned.procs["crashing"]
    wait_for(lambda: proc.poll() is not None, 30, "the crashing worker to exit")
    assert "this consumer fails on purpose" in poisoned.log("crashing")
    assert proc.returncode != 0, poisoned.tail("crashing")
