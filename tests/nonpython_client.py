"""A client that does not use this project: it speaks only the wire protocol, as a Go, Node or
Rust service would (the README's "Submitting from other languages" shows the same message).

It LPUSHes one Celery protocol-2 message for ``orchestrator.run`` onto the ``orchestrator`` list
of the Redis broker (the kombu Redis transport's format), then blocks on the run's ``done``
stream and prints the final RunResult JSON. It imports only the ``redis`` package and the
standard library, and exits 3 if anything imported orchestrator, workers, celery or kombu.

usage: python nonpython_client.py REDIS_URL KEY_PREFIX < request.json
"""

from __future__ import annotations

import base64
import json
import socket
import sys
import uuid

import redis


def celery_message(request: dict[str, object], queue: str) -> dict[str, object]:
    """The kombu envelope of one ``orchestrator.run`` task message (Celery protocol 2)."""
    run_id = str(request["run_id"])
    task_id = f"{run_id}.coordinator"  # the coordinator's task id: the run's root in Flower
    tasks = request["tasks"]
    assert isinstance(tasks, list)
    body = [[request], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]
    return {
        "body": base64.b64encode(json.dumps(body).encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": "orchestrator.run",
            "id": task_id,
            "root_id": task_id,
            "parent_id": None,
            "group": None,
            "shadow": None,
            "eta": None,
            "expires": None,
            "retries": 0,
            "timelimit": [None, None],
            # What Flower shows as the task's arguments (never the payloads).
            "argsrepr": f"run={run_id} pattern={request['pattern']} width={len(tasks)}",
            "kwargsrepr": "{}",
            "origin": f"nonpython-client@{socket.gethostname()}",
            "ignore_result": False,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }


def main() -> int:
    url, prefix = sys.argv[1], sys.argv[2]
    request = json.loads(sys.stdin.read())
    request.setdefault("run_id", uuid.uuid4().hex[:16])
    run_id = request["run_id"]
    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        # The coordinator queue's list, under the deployment's key prefix (as every key).
        r.lpush(f"{prefix}:orchestrator", json.dumps(celery_message(request, "orchestrator")))
        done = f"{prefix}:run:{run_id}:done"
        if not r.xread({done: "0-0"}, count=1, block=60_000):
            print(f"run {run_id} did not finish in 60 s", file=sys.stderr)
            return 2
        result = json.loads(r.get(f"{prefix}:run:{run_id}:result") or "null")
        if result and result.get("results_key"):
            # Every subtask reported: the envelopes stayed in their hash (README).
            envelopes = [json.loads(v) for v in r.hvals(result["results_key"])]
            result["results"] = sorted(envelopes, key=lambda e: e["index"])
        events = [f["type"] for _, f in r.xrange(f"{prefix}:run:{run_id}:events")]
    finally:
        r.close()
    print(json.dumps({"result": result, "events": events}))
    foreign = sorted(
        m for m in sys.modules if m.split(".")[0] in {"orchestrator", "workers", "celery", "kombu"}
    )
    if foreign:
        print(f"imported project modules: {foreign}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
