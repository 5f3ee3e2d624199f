"""Where the CPU goes on each hop of a parallel-spawn, in one process under cProfile.

The client's ``submit``, the coordinator's ``run`` (validation and expansion into N messages),
the worker side of every subagent (the real messages the coordinator sent, run through the agent
task with ``Task.apply``) and ``Run.wait()``; raw Celery's client send and eager no-op task
beside them. Only a Redis server is started (no worker processes), so each figure is pure CPU
plus Redis round trips of that hop, without queueing or scheduling noise.

    python -m bench.hotpaths [--n 1000] [--top 12]
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import io
import json
import pstats
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from celery import group

from bench.common import RESULTS, new_tag
from orchestrator import EmbeddedRedis, Orchestrator, Pattern, Settings, Task
from orchestrator.service import register_coordinator
from workers.app import create_app
from workers.presence import publish_catalog
from workers.registry import REGISTRY
from workers.store import make_store

T = TypeVar("T")


def profiled(label: str, fn: Callable[[], T], top: int, out: list[str]) -> tuple[T, float]:
    prof = cProfile.Profile()
    started = time.perf_counter()
    prof.enable()
    value = fn()
    prof.disable()
    wall = time.perf_counter() - started
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    out += [f"== {label}: {wall * 1000:.1f} ms", *lines[start : start + top + 1], ""]
    # Our own code by cumulative time: which of our calls the time above is spent under.
    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf).sort_stats("cumulative")
    stats.print_stats(r"/(workers|orchestrator)/", top)
    ours = [ln for ln in buf.getvalue().splitlines() if "/workers/" in ln or "/orchestrator/" in ln]
    if ours:
        out += ["   -- our functions by cumulative time --", *ours[:top], ""]
    return value, wall


def drain(r: Any, queue: str) -> list[tuple[str, str, list[Any], dict[str, Any]]]:
    """Every message waiting in a Celery queue: (task name, id, args, kwargs)."""
    msgs = []
    while (raw := r.rpop(queue)) is not None:
        msg = json.loads(raw)
        args, kwargs, _embed = json.loads(base64.b64decode(msg["body"]))
        msgs.append((msg["headers"]["task"], msg["headers"]["id"], args, kwargs))
    return msgs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args(argv)
    n, top = args.n, args.top
    out: list[str] = []
    summary: list[tuple[str, float]] = []
    with EmbeddedRedis() as server:
        settings = Settings(
            broker_url=server.url,
            key_prefix=f"hot-{new_tag()[:6]}",
            agent_modules=["workers.agents", "bench.agents"],
        )
        worker_app = create_app(settings)  # imports the agent modules, registers their tasks
        store = make_store(settings)
        publish_catalog(store, settings, REGISTRY, "hotpaths@local")
        orch = Orchestrator(settings)
        coord = register_coordinator(create_app(settings, load_agents=False), settings)
        r = store.r
        tasks = [Task("bench_noop", {"i": i}) for i in range(n)]
        orch.spawn(tasks[:2], preflight="off")  # warm caches (catalog, scripts, connections)
        drain(r, settings.coordinator_queue)

        req = orch.request(Pattern.SPAWN, tasks, preflight="off")
        _, wall = profiled(f"client submit() of {n}", lambda: orch.submit(req), top, out)
        summary.append(("client submit()", wall))
        (coord_msg,) = [
            m for m in drain(r, settings.coordinator_queue) if m[0] == "orchestrator.run"
        ]
        _, wall = profiled(
            f"coordinator run() of {n} (validate, record, expand, send)",
            lambda: coord.run(*coord_msg[2], **coord_msg[3]),
            top,
            out,
        )
        summary.append(("coordinator run()", wall))
        messages = drain(r, settings.agent_queue)

        def run_subagents() -> None:
            for name, task_id, a, kw in reversed(messages):  # oldest first
                worker_app.tasks[name].apply(args=a, kwargs=kw, task_id=task_id)

        _, wall = profiled(
            f"worker side of {n} subagents ({len(messages)} messages, Task.apply)",
            run_subagents,
            top,
            out,
        )
        summary.append(("worker side, all subagents (incl. finalise)", wall))
        run = orch.get_run(req.run_id)
        result, wall = profiled("Run.wait() (run already ended)", lambda: run.wait(10), top, out)
        summary.append(("Run.wait() after the end", wall))
        if not result.ok:
            print(f"run ended {result.status.value}: {result.error}", file=sys.stderr)
            return 1

        raw_app = create_app(settings, load_agents=False)
        tag = new_tag()
        sigs = [
            raw_app.signature(
                "bench.raw_noop", args=(i,), queue=settings.agent_queue, task_id=f"{tag}-{i}"
            )
            for i in range(n)
        ]
        _, wall = profiled(
            f"raw client group({n}).apply_async()", group(sigs).apply_async, top, out
        )
        summary.append(("raw: client group().apply_async()", wall))
        raw_msgs = drain(r, settings.agent_queue)

        def run_raw() -> None:
            for name, task_id, a, kw in reversed(raw_msgs):
                worker_app.tasks[name].apply(args=a, kwargs=kw, task_id=task_id)

        _, wall = profiled(f"raw: {n} no-op tasks (Task.apply)", run_raw, top, out)
        summary.append(("raw: worker side, all tasks", wall))
        orch.close()

    lines = [f"hot paths of a parallel-spawn of {n} no-op subagents (in-process, cProfile on)", ""]
    lines += [
        f"{label:<48} {wall * 1000:9.1f} ms  {wall / n * 1e6:8.0f} us/subagent"
        for label, wall in summary
    ]
    text = "\n".join(lines) + "\n\n" + "\n".join(out)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hotpaths.txt").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
