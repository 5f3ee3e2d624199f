"""The main job: the three patterns on built-in agents doing real work, with timings."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from orchestrator.api import Orchestrator
from orchestrator.cli.report import duration, roi_summary
from orchestrator.request import Task
from workers.models import AgentStatus, RunResult

SPAWN_MODULES = [
    "difflib",
    "argparse",
    "textwrap",
    "json.decoder",
    "csv",
    "string",
    "heapq",
    "bisect",
    "fractions",
    "statistics",
    "shlex",
    "calendar",
]
GATHER_MODULES = ["difflib", "argparse", "heapq", "statistics", "shlex", "textwrap"]


def _line(text: str = "") -> str:
    return text


def roi_lines(result: RunResult) -> list[str]:
    """Timings of one run, as the demo prints them (numbers as ``watch`` and ``report`` print
    them: the run's RoiReport, rebuilt once every subtask reported)."""
    r = result.report
    lines = [
        f"  status {result.status.value}; wall {duration(r.wall_s)}; sequential estimate "
        f"{duration(r.sequential_estimate_s)}; efficiency {r.efficiency:.0%} over {r.n}",
        f"  {roi_summary(r)}",
        f"  coordinator overhead {duration(r.coordinator_overhead_s)}; mean queue wait "
        f"{duration(r.queue_wait_s)}",
    ]
    if result.error:
        lines.append(f"  note: {result.error}")
    return lines


def run_demo(
    orch: Orchestrator, out: Callable[[str], None] = print, *, difficulty: int = 5
) -> bool:
    """Run all three patterns; True when all three succeeded."""
    ok = _spawn(orch, out)
    ok &= _gather(orch, out)
    ok &= _race(orch, out, difficulty)
    out("\nall three patterns succeeded" if ok else "\nsome pattern did not succeed (see above)")
    return ok


def _spawn(orch: Orchestrator, out: Callable[[str], None]) -> bool:
    out("== parallel-spawn: statistics of 12 standard-library modules (real files) ==")
    run = orch.spawn([Task("module_stats", {"module": m}) for m in SPAWN_MODULES], deadline_s=120)
    res = run.wait(timeout_s=150)
    for env in res.results:
        if env.status is AgentStatus.OK:
            o = env.output
            top = ", ".join(w for w, _ in o["top_words"][:3])
            out(
                f"  #{env.index:<2} {o['module']:<14} {o['lines']:>5} lines {o['functions']:>4} "
                f"functions  top: {top:<28} {env.ran_s * 1000:6.0f} ms on {env.worker}"
            )
        else:
            out(f"  #{env.index:<2} {env.status.value}: {env.error}")
    out("\n".join(roi_lines(run.settle(timeout_s=10))))  # the numbers Run.report() gives
    return res.ok


def _gather(orch: Orchestrator, out: Callable[[str], None]) -> bool:
    out("\n== gather-then-merge: findings about 6 modules, merged into one report ==")
    run = orch.gather(
        [Task("module_findings", {"module": m}) for m in GATHER_MODULES],
        merge="merge_findings",
        deadline_s=120,
    )
    res = run.wait(timeout_s=150)
    if res.merged:
        out(f"  {res.merged['summary']}")
        for fact in res.merged["facts"][:8]:
            out(f"   - {fact}")
        out(f"   ... {len(res.merged['facts'])} facts in all")
    out("\n".join(roi_lines(run.settle(timeout_s=10))))  # the numbers Run.report() gives
    return res.ok


def _race(orch: Orchestrator, out: Callable[[str], None], difficulty: int) -> bool:
    out(f"\n== race-then-cancel: proof-of-work nonce, difficulty {difficulty}, 4 racers ==")
    challenge = f"demo-{secrets.token_hex(4)}"
    racers = [Task("pow_guess", {"challenge": challenge, "difficulty": difficulty})] + [
        Task(
            "pow_solver",
            {"challenge": challenge, "difficulty": difficulty, "strategy": s, "seed": 7},
        )
        for s in ("ascending", "stride", "random")
    ]
    run = orch.race(racers, validate="pow_valid", deadline_s=120)
    res = run.wait(timeout_s=150)
    if res.winner is not None:
        w = res.winner.output
        out(
            f"  winner #{res.winner.index} ({w['strategy']}): nonce {w['nonce']} digest "
            f"{w['digest'][:16]}... after {w['tries']} tries"
        )
    settled = run.settle(timeout_s=10)  # the losers' own envelopes: when each really stopped
    for env in settled.results:
        why = f" ({env.error.message[:60]})" if env.error else ""
        lat = env.cancel_latency_s
        stop = f", stopped {lat * 1000:.1f} ms after the win" if lat is not None else ""
        out(
            f"  #{env.index} {env.agent:<10} {env.status.value:<9} ran {env.ran_s * 1000:6.0f} ms"
            f"{stop}{why}"
        )
    out("\n".join(roi_lines(settled)))
    return res.ok
