"""How fast a cancel of the root stops a whole tree, level by level.

    python -m bench.tree_cancel                 # width 4, 3 levels of child runs, 5 rounds
    python -m bench.tree_cancel --width 8 --levels 2 --rounds 3

A root run's one subagent spawns ``width`` copies of itself, ``levels`` deep; the leaves sleep
until stopped. Once every leaf runs, the root is cancelled (``run.cancel()``); for each depth,
the time from the cancel to the last envelope of that depth's runs (the subagent really
stopped, as its envelope says) and to the last of those runs ending. One worker process (async
subagents on its event loop) and one coordinator on the embedded server.
Writes ``bench/results/tree-cancel-latest.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import time
from collections import defaultdict

from bench.common import RESULTS, BenchError, ms, table
from bench.tree_agents import Branch
from orchestrator import EmbeddedStack, Orchestrator, RunTree, Task


def _walk(tree: RunTree, depth: int = 0) -> list[tuple[int, RunTree]]:
    out = [(depth, tree)]
    for child in tree.children:
        out.extend(_walk(child, depth + 1))
    return out


def one_round(orch: Orchestrator, width: int, levels: int) -> dict[int, tuple[float, float]]:
    """depth -> (seconds to the last envelope, seconds to the last run ending)."""
    run = orch.spawn([Task("bench.branch", Branch(width=width, levels=levels))], deadline_s=120)
    leaves = width**levels
    limit = time.monotonic() + 60
    while True:
        deepest = [t for d, t in _walk(run.tree()) if d == levels]
        running = sum(t.progress.started for t in deepest if t.progress)
        if running >= leaves:
            break
        if time.monotonic() > limit:
            raise BenchError(f"only {running} of {leaves} leaves started in 60 s")
        time.sleep(0.05)
    cancelled_at = time.time()
    run.cancel()
    limit = time.monotonic() + 30
    while True:
        nodes = _walk(run.tree())
        if all(t.result and len(t.result.results) == t.result.report.n for _, t in nodes) and all(
            e.finished_at for _, t in nodes if t.result for e in t.result.results
        ):
            break
        if time.monotonic() > limit:
            raise BenchError("the tree did not stop within 30 s of the cancel")
        time.sleep(0.02)
    stopped: dict[int, list[float]] = defaultdict(list)
    ended: dict[int, list[float]] = defaultdict(list)
    for depth, t in nodes:
        assert t.result is not None
        ended[depth].append(t.result.finished_at - cancelled_at)
        stopped[depth].extend((e.finished_at or 0) - cancelled_at for e in t.result.results)
    return {d: (max(stopped[d]), max(ended[d])) for d in sorted(ended)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=4)
    parser.add_argument("--levels", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    stack = EmbeddedStack(
        agent_modules=["bench.tree_agents"], workers=1, concurrency=1,
        extra_env={"ORCH_TREE__MAX_SUBAGENTS": "100000"},
    ).start()  # fmt: skip
    try:
        with Orchestrator(broker_url=stack.url, key_prefix=stack.key_prefix) as orch:
            rounds = [one_round(orch, args.width, args.levels) for _ in range(args.rounds)]
    finally:
        stack.stop()
    rows = []
    for depth in sorted(rounds[0]):
        stops = sorted(r[depth][0] for r in rounds)
        ends = sorted(r[depth][1] for r in rounds)
        runs = args.width ** max(depth - 1, 0) if depth else 1
        rows.append([
            str(depth), str(runs), ms(stops[len(stops) // 2]), ms(stops[-1]),
            ms(ends[len(ends) // 2]), ms(ends[-1]),
        ])  # fmt: skip
    when = dt.date.today().isoformat()
    head = (
        f"Tree cancel, {when}: width {args.width}, {args.levels} levels of child runs "
        f"({args.width**args.levels} leaves), {args.rounds} rounds, one worker process, "
        f"Python {platform.python_version()}."
    )
    out = table(
        [
            "depth",
            "runs",
            "subagents stopped, median ms",
            "max ms",
            "runs ended, median ms",
            "max ms",
        ],
        rows,
    )
    text = f"{head}\n\n{out}\n"
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tree-cancel-latest.md").write_text(text)


if __name__ == "__main__":
    main()
