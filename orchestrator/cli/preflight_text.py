"""A pre-flight as the short table `orchestrator preflight` prints (pure)."""

from __future__ import annotations

from orchestrator.advisor import CheckStatus, Preflight
from orchestrator.cli.report import duration as _ms
from orchestrator.cli.report import x_of

__all__ = ["preflight_lines"]


def preflight_lines(pf: Preflight) -> list[str]:
    """A pre-flight as a short table: verdict, predicted numbers, one line per check."""
    slots = ", ".join(f"{q}: {n}" for q, n in pf.slots.items()) or "none"
    lines = [
        f"pre-flight: {pf.pattern.value} of {pf.n} tasks -> {pf.verdict.value.upper()} "
        f"(predicted speedup {x_of(pf.speedup)})",
        f"  sequential {_ms(pf.sequential_s)} | parallel {_ms(pf.parallel_s)} on {slots} slots "
        f"({pf.waves} wave{'s' if pf.waves != 1 else ''}) | spawn overhead "
        f"{_ms(pf.spawn_overhead_s)} | merge {_ms(pf.merge_s)} | cost {_ms(pf.cost_s)} of work",
    ]
    mark = {CheckStatus.PASS: "pass", CheckStatus.WARN: "WARN", CheckStatus.FAIL: "FAIL"}
    lines += [f"  {mark[c.status]:<5} {c.name:<13} {c.reason}" for c in pf.checks]
    return lines
