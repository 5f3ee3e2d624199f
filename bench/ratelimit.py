"""A spawn of model calls against a provider's rate limit, with and without our limiter.

The loopback streaming model server (tests/model_server.py) enforces ``--per`` requests in any
``--window-s`` seconds and answers 429 with the Retry-After that frees a place beyond it. A
spawn of ``--requests`` async calls runs three ways on the same workers:

- **limiter**: ``workers.llm.chat`` under ORCH_RATE_LIMITS (the same limit, over a window 5 %
  wider, at least 0.5 s: a request reaches the server a moment after its grant);
- **retries**: no limiter, chat's retries (jittered backoff honouring Retry-After), the naive
  baseline;
- **no retry**: no limiter, one attempt.

For each: failed subagents, retries, 429s the server answered, the most requests it saw in any
window, and the wall time beside the limit's own floor (the last window's start plus one
call: ``(ceil(n / per) - 1) * window``). Pre-flight's prediction for the limiter's run is shown
beside it.

    python -m bench.ratelimit                    # 200 calls, 60 per 10 s
    python -m bench.ratelimit --quick            # 40 calls, 10 per 2 s
    python -m bench.ratelimit --requests 200 --per 60 --window-s 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.ratelimit_agents import LIMITED_MODEL
from orchestrator import EmbeddedStack, Orchestrator, RunResult, Task
from tests.model_server import ModelServer

ROOT = Path(__file__).resolve().parent.parent
#: Our window over the provider's (5 %, at least half a second): the slack for the time
#: between a grant and its request's arrival.
WINDOW_SLACK, MIN_SLACK_S = 1.05, 0.5
MODES = (("limiter", "rl.limited"), ("retries", "rl.retrying"), ("no retry", "rl.once"))


@dataclass
class Outcome:
    mode: str
    wall_s: float
    failed: int
    retries: int
    refused: int
    most_in_window: int
    throttled_s: float
    predicted_s: float | None


def floor_s(n: int, per: int, window_s: float) -> float:
    """The limit's own floor: n requests, ``per`` in any window, start in ceil(n/per) windows."""
    return (math.ceil(n / per) - 1) * window_s


def _most_in_a_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while times[lo] <= t - window_s:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _tasks(agent: str, n: int, tokens: int) -> list[Task]:
    return [
        Task(agent, {"prompt": f"go [[tokens={tokens} interval_ms=10 id={uuid.uuid4().hex}]]"})
        for _ in range(n)
    ]


def run_mode(
    o: Orchestrator, server: ModelServer, mode: str, agent: str, args: argparse.Namespace
) -> Outcome:
    tasks = _tasks(agent, args.requests, args.tokens)
    predicted = o.preflight("parallel-spawn", tasks).parallel_s if mode == "limiter" else None
    server.limit(args.per, args.window_s)
    started = time.monotonic()
    res: RunResult = o.spawn(tasks, deadline_s=args.deadline_s, preflight="off").wait(
        timeout_s=args.deadline_s + 30
    )
    wall_s = time.monotonic() - started
    admitted, refused = server.admitted_at(), server.refused_by_limit
    server.limit(None)
    return Outcome(
        mode=mode,
        wall_s=wall_s,
        failed=sum(1 for e in res.results if e.status.value != "ok"),
        retries=sum(e.retries for e in res.results),
        refused=refused,
        most_in_window=_most_in_a_window(admitted, args.window_s),
        throttled_s=sum(e.throttled_s for e in res.results),
        predicted_s=predicted,
    )


def _warm(o: Orchestrator, args: argparse.Namespace) -> None:
    """A few calls of each agent, under no server limit: the workers' clients are made and
    pre-flight learns the call's own run time."""
    for _, agent in MODES:
        o.spawn(_tasks(agent, 6, args.tokens), deadline_s=60, preflight="off").wait(timeout_s=60)


def table(outcomes: list[Outcome], args: argparse.Namespace) -> str:
    floor = floor_s(args.requests, args.per, args.window_s)
    head = (
        f"| mode | failed | retries | 429s | most in a {args.window_s:g} s window | wall | "
        f"wall / floor ({floor:.1f} s) | predicted |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|"]
    for x in outcomes:
        pred = f"{x.predicted_s:.1f} s" if x.predicted_s is not None else ""
        lines.append(
            f"| {x.mode} | {x.failed}/{args.requests} | {x.retries} | {x.refused} | "
            f"{x.most_in_window} (limit {args.per}) | {x.wall_s:.1f} s | "
            f"{x.wall_s / max(floor, 1e-9):.2f} | {pred} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ratelimit")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--per", type=int, default=60)
    parser.add_argument("--window-s", type=float, default=10.0)
    parser.add_argument("--tokens", type=int, default=20, help="tokens each call streams")
    parser.add_argument("--deadline-s", type=float, default=300.0)
    parser.add_argument("--quick", action="store_true", help="40 calls at 10 per 2 s")
    parser.add_argument("--json", type=Path, help="also write the outcomes here")
    args = parser.parse_args(argv)
    if args.quick:
        args.requests, args.per, args.window_s, args.tokens = 40, 10, 2.0, 10
    our_window_s = max(args.window_s * WINDOW_SLACK, args.window_s + MIN_SLACK_S)
    ours = {"requests_per_minute": args.per * 60 / our_window_s, "window_s": our_window_s}
    with ModelServer() as server:
        stack = EmbeddedStack(
            workers=2,
            concurrency=1,
            agent_modules=["workers.agents", "bench.ratelimit_agents"],
            extra_env={
                "PYTHONPATH": os.pathsep.join(
                    filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
                ),
                "ORCH_LLM__BASE_URL": server.url + "/v1",
                "ORCH_LLM__API_KEY": "sk-bench",
                "ORCH_RATE_LIMITS": json.dumps({LIMITED_MODEL: ours}),
            },
        ).start()
        o = Orchestrator(broker_url=stack.url, key_prefix=stack.key_prefix)
        try:
            _warm(o, args)
            outcomes = [run_mode(o, server, mode, agent, args) for mode, agent in MODES]
        finally:
            o.close()
            stack.stop()
    print(
        f"{args.requests} async calls, provider limit {args.per} requests / {args.window_s:g} s "
        f"(429 + Retry-After beyond), 2 workers"
    )
    print(table(outcomes, args))
    if args.json:
        args.json.write_text(json.dumps([o.__dict__ for o in outcomes], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
