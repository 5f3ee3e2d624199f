"""Hedged races against a heavy tail: p50 and p99 of one call against a race whose racer i
starts only ``i * hedge_after_s`` after the run and only if no valid result arrived by then,
and what the hedge cost in extra subagents started and extra tokens.

The loopback model server (``tests/model_server.py``) answers each call in ``--fast-ms`` (100)
or, with probability ``--tail`` (5%), in ``--slow-ms`` (5000): the benchmark draws each call's
time in advance (seeded), each racer independently, so every configuration sees the same
distribution. The agent is ``bench.hedge_agents.tail`` (async, ``workers.llm.chat``), on one
worker process. First ``--history`` single calls run (the agent's history), then every
configuration's runs, interleaved: a single call, hedged races after the measured p95 and
p90 (``hedge="p95"``: each run resolves it from the history so far) and after a fixed delay.
"hedge after" is the mean delay the runs used; "extra subagents" the racers started beyond
the first, per run; "tokens" per run.

    python -m bench.hedge                     # 200 samples per row, 8 runs in flight
    python -m bench.hedge --samples 50        # quicker
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from bench.common import RESULTS, quantile, table
from orchestrator import EmbeddedStack, Orchestrator, RunStatus, Task
from tests.model_server import ModelServer

AGENT = "bench.tail"


@dataclass
class Row:
    """One configuration's measurements."""

    name: str
    latencies_s: list[float] = field(default_factory=list)
    started: list[int] = field(default_factory=list)  # subagents that called the model
    tokens: list[int] = field(default_factory=list)
    hedge_after_s: list[float] = field(default_factory=list)  # what each run resolved to
    failed: int = 0


class Draw:
    """Each call's answer time, drawn in advance from the heavy tail."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.rng = random.Random(args.seed)
        self.args = args
        self.seq = 0

    def task(self) -> Task:
        self.seq += 1
        slow = self.rng.random() < self.args.tail
        answer_ms = self.args.slow_ms if slow else self.args.fast_ms
        return Task(AGENT, {"answer_ms": answer_ms, "seq": self.seq})


async def _one(
    orch: Orchestrator, row: Row, tasks: list[Task], options: dict[str, Any], slots: Any
) -> None:
    async with slots:
        t0 = time.perf_counter()
        if len(tasks) == 1:
            run = await orch.spawn_async(tasks, preflight="off", deadline_s=60)
        else:
            run = await orch.race_async(tasks, preflight="off", deadline_s=60, **options)
        res = await run.wait_async(timeout_s=90)
        row.latencies_s.append(time.perf_counter() - t0)
        if res.status is not RunStatus.SUCCEEDED:
            row.failed += 1
        settled = await asyncio.to_thread(run.settle, 15.0)  # the losers' tokens arrive late
        row.started.append(sum(1 for r in settled.results if r.started_at is not None))
        row.tokens.append(settled.report.tokens_spent)
        if settled.report.hedge_after_s is not None:
            row.hedge_after_s.append(settled.report.hedge_after_s)


async def _all(orch: Orchestrator, args: argparse.Namespace) -> list[Row]:
    """The history first (single calls, not counted), then every configuration's runs
    interleaved, so that a machine whose load changes meanwhile weighs on each row alike."""
    draw = Draw(args)
    slots = asyncio.Semaphore(args.parallel)
    history = Row("history")
    await asyncio.gather(
        *(_one(orch, history, [draw.task()], {}, slots) for _ in range(args.history))
    )
    fixed = args.hedge_after_s
    plans: list[tuple[str, int, dict[str, Any]]] = [
        ("single call", 1, {}),
        # hedge_after_s: the fallback while the history is too short (--history below 20).
        ("race of 2, hedge='p95'", 2, {"hedge": "p95", "hedge_after_s": fixed}),
        ("race of 3, hedge='p95'", 3, {"hedge": "p95", "hedge_after_s": fixed}),
        ("race of 2, hedge='p90'", 2, {"hedge": "p90", "hedge_after_s": fixed}),
        (f"race of 2, hedge_after_s={fixed}", 2, {"hedge_after_s": fixed}),
    ]
    rows = [Row(name) for name, _, _ in plans]
    runs = [
        _one(orch, row, [draw.task() for _ in range(racers)], options, slots)
        for _ in range(args.samples)
        for row, (_, racers, options) in zip(rows, plans, strict=True)
    ]
    await asyncio.gather(*runs)
    return rows


def _render(rows: list[Row], args: argparse.Namespace) -> str:
    base = rows[0]
    base_tokens = statistics.fmean(base.tokens) if base.tokens else 0.0
    out = []
    for r in rows:
        tokens = statistics.fmean(r.tokens) if r.tokens else 0.0
        extra = statistics.fmean(r.started) - 1 if r.started else 0.0
        out.append(
            [
                r.name,
                f"{quantile(r.latencies_s, 0.50) * 1000:.0f} ms",
                f"{quantile(r.latencies_s, 0.99) * 1000:.0f} ms",
                f"{statistics.fmean(r.hedge_after_s) * 1000:.0f} ms" if r.hedge_after_s else "-",
                f"{extra:+.3f}",
                f"{tokens:.1f} ({(tokens / base_tokens - 1) * 100 if base_tokens else 0:+.1f}%)",
                str(r.failed),
            ]
        )
    head = (
        f"{args.samples} samples per row, {args.parallel} in flight; answers "
        f"{100 - args.tail * 100:.0f}% in {args.fast_ms} ms, {args.tail * 100:.0f}% in "
        f"{args.slow_ms} ms (seed {args.seed})\n"
    )
    headers = ["configuration", "p50", "p99", "hedge after", "extra subagents", "tokens", "failed"]
    return head + table(headers, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--samples", type=int, default=200, help="runs per configuration")
    p.add_argument("--history", type=int, default=40, help="single calls run first (p95's data)")
    p.add_argument("--parallel", type=int, default=8, help="runs in flight at once")
    p.add_argument("--tail", type=float, default=0.05, help="share of slow answers")
    p.add_argument("--fast-ms", type=int, default=100)
    p.add_argument("--slow-ms", type=int, default=5000)
    p.add_argument("--hedge-after-s", type=float, default=0.5, help="the fixed hedge delay")
    p.add_argument("--seed", type=int, default=2026)
    args = p.parse_args(argv)
    log_dir = RESULTS / "logs" / f"hedge-{uuid.uuid4().hex[:6]}"
    with ModelServer() as model:
        stack = EmbeddedStack(
            workers=1,
            concurrency=2,
            agent_modules=["bench.hedge_agents"],
            key_prefix=f"hedge-{uuid.uuid4().hex[:6]}",
            extra_env={
                "ORCH_LLM__BASE_URL": model.url + "/v1",
                "ORCH_LLM__API_KEY": "sk-loopback",
                "ORCH_ADVISOR__STATS_SAMPLES": str(max(200, args.samples)),
            },
            log_dir=log_dir,
        ).start()
        orch = Orchestrator(broker_url=stack.url, key_prefix=stack.key_prefix)
        try:
            rows = asyncio.run(_all(orch, args))
        finally:
            orch.close()
            stack.stop()
    print(_render(rows, args))


if __name__ == "__main__":
    main()
