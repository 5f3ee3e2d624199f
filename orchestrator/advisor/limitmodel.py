"""The advisor's rate-limit model (pure): when the fleet-wide limits let each call start.

An agent's calls are under the limits its catalog entry publishes (``@agent(model=...,
rate_limit=...)`` resolved against the publishing worker's ORCH_RATE_LIMITS). The timing
model's schedule asks a :class:`Gate` when each task may start: the gate replays the limits'
sliding windows (requests and tokens per window, concurrent calls) over the tasks started so
far, as ``throttle.lua`` does at run time, so a fan-out of 200 under 60 requests per 10 s
starts in waves of 60, ten seconds apart, however many slots wait. Each call is charged its
agent's mean measured tokens when it starts (input and output limits alike: the statistics
keep the total only, so a token limit is judged on the safe side). Measured run times leave
out the time subagents waited under limits (workers/stats.py), so the wait is predicted here,
from the limits, not learned twice.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from workers.models import AgentKind, CatalogEntry
from workers.ratelimit import RateLimit
from workers.request import OrchestrationRequest
from workers.stats import StatsSnapshot

__all__ = ["Gate", "LimitRate", "allowed_width", "task_limits", "task_tokens"]

#: Two grants this close count as one moment (a window's edge is exclusive).
EPSILON_S = 1e-9
#: Rounds of "the earliest start under every limit" before giving up (each moves it later).
MAX_ROUNDS = 1000


@dataclass(frozen=True)
class LimitRate:
    """One limit's allowances per window, as the schedule replays them (0: no limit)."""

    name: str
    window_s: float
    requests: int = 0
    tokens: int = 0
    concurrent: int = 0

    @classmethod
    def of(cls, name: str, raw: Mapping[str, float]) -> LimitRate:
        """From a catalog entry's ``rate_limits`` value (a RateLimit's fields)."""
        q = RateLimit.model_validate(raw).quota()
        token_limits = [t for t in (q.input_tokens, q.output_tokens) if t]
        return cls(
            name=name,
            window_s=q.window_ms / 1000,
            requests=q.requests,
            tokens=min(token_limits) if token_limits else 0,
            concurrent=q.concurrent,
        )

    def describe(self) -> str:
        """``10 requests, 9000 tokens per 2.4 s, 4 at once``."""
        parts = [f"{self.requests} requests"] if self.requests else []
        parts += [f"{self.tokens} tokens"] if self.tokens else []
        text = f"{', '.join(parts)} per {self.window_s:g} s" if parts else ""
        if self.concurrent:
            text += f"{', ' if text else ''}{self.concurrent} at once"
        return text


def task_limits(
    req: OrchestrationRequest, catalog: Mapping[tuple[AgentKind, str], CatalogEntry]
) -> list[list[LimitRate]]:
    """The limits each task's calls are under, from its agent's catalog entry."""
    by_agent: dict[str, list[LimitRate]] = {}
    for t in req.tasks:
        if t.agent not in by_agent:
            entry = catalog.get((AgentKind.AGENT, t.agent))
            raw = entry.rate_limits if entry else {}
            by_agent[t.agent] = [LimitRate.of(n, v) for n, v in sorted(raw.items())]
    return [by_agent[t.agent] for t in req.tasks]


def task_tokens(req: OrchestrationRequest, stats: StatsSnapshot) -> list[float]:
    """Each task's predicted tokens: its agent's measured mean (0: none measured)."""
    out = []
    for t in req.tasks:
        s = stats.agents.get(t.agent)
        out.append(s.tokens.mean if s is not None and s.tokens is not None else 0.0)
    return out


@dataclass
class _Log:
    """One limit's grants so far: (start, tokens) by start, and the calls' ends."""

    starts: list[float] = field(default_factory=list)
    tokens: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)

    def add(self, start: float, tokens: float, end: float) -> None:
        at = bisect.bisect_right(self.starts, start)
        self.starts.insert(at, start)
        self.tokens.insert(at, tokens)
        bisect.insort(self.ends, end)


class Gate:
    """When each task may start under its limits, given the tasks started before it."""

    def __init__(self, limits: Sequence[Sequence[LimitRate]], tokens: Sequence[float]) -> None:
        self.limits = limits
        self.tokens = tokens
        self._logs: dict[str, _Log] = {}

    def __bool__(self) -> bool:
        return any(self.limits)

    def start(self, i: int, ready_s: float) -> float:
        """The earliest moment from ``ready_s`` on that task ``i`` fits every limit."""
        t = ready_s
        for _ in range(MAX_ROUNDS):
            later = max(
                (self._earliest(lim, t, self.tokens[i]) for lim in self.limits[i]), default=t
            )
            if later <= t:
                return t
            t = later
        return t

    def record(self, i: int, start: float, end: float) -> None:
        """Task ``i`` was granted at ``start`` and ends at ``end``."""
        for lim in self.limits[i]:
            self._logs.setdefault(lim.name, _Log()).add(start, self.tokens[i], end)

    def _earliest(self, lim: LimitRate, t: float, tokens: float) -> float:
        log = self._logs.get(lim.name)
        if log is None:
            return t
        lo = bisect.bisect_right(log.starts, t - lim.window_s + EPSILON_S)
        hi = bisect.bisect_right(log.starts, t)
        later = t
        if lim.requests and hi - lo >= lim.requests:
            later = max(later, log.starts[hi - lim.requests] + lim.window_s)
        in_window = log.tokens[lo:hi]
        used = sum(in_window)
        if lim.tokens and used > 0 and used + tokens > lim.tokens:
            freed = 0.0
            for k, spent in enumerate(in_window):  # the oldest leave the window first
                freed += spent
                if used - freed + tokens <= lim.tokens:
                    later = max(later, log.starts[lo + k] + lim.window_s)
                    break
        if lim.concurrent:
            running = [e for e in log.ends if e > t + EPSILON_S]
            if len(running) >= lim.concurrent:
                later = max(later, running[len(running) - lim.concurrent])
        return later


def allowed_width(lim: LimitRate, call_s: float, tokens: float) -> int:
    """Calls the limit keeps in flight at once, in its steady state: each window lets in
    ``requests`` calls (and ``tokens / tokens per call``), each in flight ``call_s``."""
    per_s = [lim.requests / lim.window_s] if lim.requests else []
    if lim.tokens and tokens > 0:
        per_s.append(lim.tokens / tokens / lim.window_s)
    widths = [r * call_s for r in per_s] + ([lim.concurrent] if lim.concurrent else [])
    return max(1, math.floor(min(widths) + 1e-9)) if widths else 0
