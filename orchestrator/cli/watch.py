"""``orchestrator watch RUN_ID``: a run's live progress in the terminal, from its event stream.

The view is a fold of the run's events (:class:`RunView`), so it is the same whether the watcher
starts before the first subtask or long after the run ended. On a terminal it redraws in place;
elsewhere (logs, pipes, tests) it prints a new block whenever something changed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.cli.limits import limits_of
from orchestrator.cli.report import duration, roi_summary
from orchestrator.cli.spend import tokens, usd
from orchestrator.events import EventType, RunEvent, follow_events
from workers import ending
from workers.errors import RunTimedOut
from workers.models import Pattern, RunResult
from workers.patterns import pattern_of
from workers.store import RunStore

#: One character per subtask in the strip.
SYMBOLS = {
    "pending": " ",
    "queued": ".",
    "running": ">",
    "ok": "+",
    "error": "x",
    "invalid": "!",
    "cancelled": "c",
    "skipped": "s",
    "lost": "?",
}
LEGEND = "+ ok  x error  ! invalid  > running  . queued  c cancelled  s skipped  W won"
BAR_WIDTH = 30
#: Subtasks listed one per line up to this many (a strip of symbols always).
DETAIL_MAX = 12


@dataclass
class SubtaskView:
    """What the events said about one subtask."""

    index: int
    agent: str
    state: str = "pending"
    worker: str | None = None
    fraction: float | None = None
    started_ts: float | None = None
    finished_ts: float | None = None
    won: bool = False
    #: Waits under rate limits that ended, and retries scheduled (its throttled, retry events).
    throttled_s: float = 0.0
    retries: int = 0


@dataclass
class RunView:
    """A run's state folded from its events."""

    run_id: str
    pattern: Pattern
    subtasks: list[SubtaskView]
    created_at: float
    deadline_at: float
    status: str = "submitted"
    merger: str | None = None
    merged: bool = False
    winner: int | None = None
    verdict: str | None = None
    cancel_reason: str | None = None
    finished_ts: float | None = None
    #: The run's ledger as the events told it (tokens, dollars), and its budget.
    tokens: int = 0
    cost_usd: float = 0.0
    max_tokens: int | None = None

    @classmethod
    def from_record(cls, rec: dict[str, str]) -> RunView:
        """An empty view from the run record."""
        agents: list[str] = json.loads(rec.get("agents", "[]"))
        return cls(
            run_id=rec["run_id"],
            pattern=Pattern(rec["pattern"]),
            subtasks=[SubtaskView(i, a) for i, a in enumerate(agents)],
            created_at=float(rec["created_at"]),
            deadline_at=float(rec["deadline_at"]),
            merger=rec.get("merge") or None,
            max_tokens=int(rec["max_tokens"]) if rec.get("max_tokens") else None,
        )

    @property
    def n(self) -> int:
        """Number of subtasks."""
        return len(self.subtasks)

    @property
    def finished(self) -> bool:
        """True once the run_finished event was seen."""
        return self.finished_ts is not None

    def apply(self, ev: RunEvent) -> None:
        """Fold one event in (unknown types are ignored)."""
        sub = self.subtasks[ev.index] if ev.index is not None and 0 <= ev.index < self.n else None
        kind = ev.kind
        if kind in (EventType.QUEUED, EventType.EXPANDED):
            self.status = "running"
            for s in self.subtasks:
                if s.state == "pending":
                    s.state = "queued"
        elif kind is EventType.PREFLIGHT:
            self.verdict = ev.verdict
        elif kind is EventType.STARTED and sub is not None:
            if sub.state in ("pending", "queued"):
                sub.state = "running"
            sub.worker, sub.started_ts = ev.worker, ev.ts
        elif kind is EventType.PROGRESS and sub is not None:
            sub.fraction = ev.fraction
        elif kind is EventType.FINISHED and sub is not None:
            sub.state = ev.status or "ok"
            sub.finished_ts = ev.ts
            sub.won = sub.won or bool(ev.won)
        elif kind is EventType.WON and ev.index is not None:
            self.winner = ev.index
            if sub is not None:
                sub.won = True
        elif kind is EventType.CANCEL_REQUESTED:
            self.cancel_reason = ev.reason
        elif kind is EventType.MERGED:
            self.merged = True
            self.merger = ev.merger or self.merger
        elif kind is EventType.RUN_FINISHED:
            self.status = ev.status or "finished"
            self.finished_ts = ev.ts
        if ev.tokens is not None:  # finished, budget_exceeded: the ledger after it
            self.tokens = max(self.tokens, ev.tokens)
            self.cost_usd = max(self.cost_usd, ev.cost_usd or 0.0)
        if kind is EventType.BUDGET_EXCEEDED:
            self.cancel_reason = "budget exceeded"
        elif kind is EventType.THROTTLED and sub is not None:
            sub.throttled_s += ev.waited_s or 0.0
        elif kind is EventType.RETRY and sub is not None:
            sub.retries += 1

    def limits_line(self) -> str | None:
        """The run's throttled time and retries so far, or None while there are none."""
        throttled_s = sum(s.throttled_s for s in self.subtasks)
        retries = sum(s.retries for s in self.subtasks)
        if not throttled_s and not retries:
            return None
        waited = sum(1 for s in self.subtasks if s.throttled_s)
        return (
            f"  rate limits: throttled {duration(throttled_s)} in all ({waited} subagents "
            f"waited, mean {duration(throttled_s / max(self.n, 1))}); {retries} retries"
        )

    # -- drawing ---------------------------------------------------------------------------
    def progress(self) -> tuple[int, int]:
        """(steps done, steps in all) for this pattern's bar."""
        done = sum(1 for s in self.subtasks if s.finished_ts is not None)
        decided = self.winner is not None or self.finished
        return pattern_of(self.pattern).progress(done, self.n, merged=self.merged, decided=decided)

    def counts(self) -> dict[str, int]:
        """Subtasks per state."""
        out: dict[str, int] = {}
        for s in self.subtasks:
            out[s.state] = out.get(s.state, 0) + 1
        return out

    def strip(self) -> str:
        """One symbol per subtask."""
        return "".join("W" if s.won else SYMBOLS.get(s.state, "?") for s in self.subtasks)

    def body(self) -> list[str]:
        """Everything but the clock: redrawn (or reprinted) when it changes."""
        done, total = self.progress()
        filled = BAR_WIDTH * done // max(total, 1)
        counts = "  ".join(f"{k}={v}" for k, v in sorted(self.counts().items()))
        unit = pattern_of(self.pattern).progress_unit
        lines = [
            f"[{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done}/{total} {unit}  {counts}",
            f"  subtasks |{self.strip()}|",
        ]
        if self.n <= DETAIL_MAX:
            for s in self.subtasks:
                took = (
                    f" {duration(s.finished_ts - s.started_ts)}"
                    if s.finished_ts is not None and s.started_ts is not None
                    else ""
                )
                pct = (
                    f" {s.fraction:.0%}" if s.fraction is not None and s.finished_ts is None else ""
                )
                win = " (winner)" if s.won else ""
                where = f"  {s.worker}" if s.worker else ""
                limits = limits_of(s.throttled_s, s.retries)
                lines.append(
                    f"  #{s.index:<3} {s.agent:<18} {s.state:<9}{pct}{took}{win}{limits}{where}"
                )
        if (limits_line := self.limits_line()) is not None:
            lines.append(limits_line)
        if self.merger:  # only a gather has one
            lines.append(f"  merge {self.merger}: {'done' if self.merged else 'waiting'}")
        if self.winner is not None:
            lines.append(f"  race won by #{self.winner}")
        if self.cancel_reason:
            lines.append(f"  stop requested: {self.cancel_reason}")
        return [line.rstrip() for line in lines]

    def header(self, now: float) -> str:
        """Run id, pattern, status and the clock."""
        end = self.finished_ts if self.finished_ts is not None else now
        left = self.deadline_at - now
        clock = f"elapsed {max(0.0, end - self.created_at):.1f}s"
        if not self.finished:
            clock += f", deadline in {left:.0f}s" if left > 0 else ", deadline passed"
        verdict = f"  pre-flight {self.verdict}" if self.verdict else ""
        spend = ""
        if self.tokens or self.max_tokens is not None:
            spend = f"  {tokens(self.tokens)} tokens"
            spend += f" of {tokens(self.max_tokens)}" if self.max_tokens is not None else ""
            spend += f" {usd(self.cost_usd)}" if self.cost_usd else ""
        return f"run {self.run_id}  {self.pattern.value}  {self.status}  {clock}{verdict}{spend}"


def _pipe_state(view: RunView) -> tuple[object, ...]:
    """What must change for a new block in a pipe: states, not the clock nor progress."""
    retries = sum(s.retries for s in view.subtasks)
    run = (view.status, view.merged, view.winner, view.cancel_reason, view.tokens, retries)
    return run + tuple((s.state, s.won) for s in view.subtasks)


def _progress_line(view: RunView, lines: list[str]) -> str:
    """One line between blocks in a pipe: the header, the bar and the running ones' progress."""
    running = [
        f"#{s.index} {s.fraction:.0%}"
        for s in view.subtasks
        if s.fraction is not None and s.finished_ts is None
    ]
    detail = f"  {' '.join(running)}" if running and view.n <= DETAIL_MAX else ""
    return f"... {lines[0]}  {lines[1].strip()}{detail}"


class _Screen:
    """Where the drawing goes: redrawn in place on a terminal; in a pipe, a block per change of
    state and a progress line at most every ``progress_every_s``."""

    def __init__(self, echo: Callable[[str], None], *, tty: bool, progress_every_s: float) -> None:
        self.echo = echo
        self.tty = tty
        self.progress_every_s = progress_every_s
        self.drawn: list[str] = []
        self.shown: tuple[object, ...] | None = None
        self.shown_progress: list[float | None] = []
        self.shown_at = 0.0

    def show(self, view: RunView) -> None:
        lines = [view.header(time.time()), *view.body()]
        if self.tty:
            # Move up over the previous drawing and clear it, then draw again.
            prefix = f"\x1b[{len(self.drawn)}F\x1b[J" if self.drawn else ""
            self.echo(prefix + "\n".join(lines))
            self.drawn = lines
            return
        state, progress = _pipe_state(view), [s.fraction for s in view.subtasks]
        now = time.monotonic()
        if state != self.shown:
            self.echo("\n".join(lines))
            self.shown, self.shown_progress, self.shown_at = state, progress, now
        elif progress != self.shown_progress and now - self.shown_at >= self.progress_every_s:
            self.echo(_progress_line(view, lines))
            self.shown_progress, self.shown_at = progress, now


def watch_run(
    store: RunStore,
    revoke: Callable[[list[str]], None],
    run_id: str,
    echo: Callable[[str], None],
    *,
    tty: bool = False,
    timeout_s: float | None = None,
    refresh_s: float = 0.5,
    progress_every_s: float = 5.0,
    settle_s: float = 10.0,
) -> RunResult:
    """Draw the run's progress until it ends; return its result.

    On a terminal the drawing is redrawn in place at every event and clock tick. Elsewhere (a
    log, a pipe) a block is printed only when a subtask or the run changed state, and progress
    reports in between as one line at most every ``progress_every_s``.

    After the end, it waits (at most ``settle_s``) for the subtasks still stopping (a race's
    losers) to report, and returns the result rebuilt from every envelope, as ``Run.report()``
    and ``orchestrator report`` do: every reader shows one set of numbers. RunTimedOut when
    ``timeout_s`` passes first (the run goes on). Like ``Run.wait``, a run whose deadline passed
    long ago is ended from here when no coordinator did.
    """
    view = RunView.from_record(store.record(run_id))
    limit = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
    settle_by: float | None = None
    screen = _Screen(echo, tty=tty, progress_every_s=progress_every_s)
    echo(f"legend: {LEGEND}")
    for batch in follow_events(store, run_id, block_s=refresh_s):
        for ev in batch:
            view.apply(ev)
        screen.show(view)
        if view.finished:
            settle_by = settle_by or time.monotonic() + settle_s
            if store.reported_count(run_id) >= view.n or time.monotonic() > min(settle_by, limit):
                break
            continue
        overdue = ending.overdue(view.deadline_at, grace_s=ending.DEADLINE_GRACE_S)
        if overdue and not store.has_ended(run_id):
            ending.expire(store, revoke, run_id)  # nobody ended it: the coordinator may be gone
        if time.monotonic() > limit:
            raise RunTimedOut(
                f"stopped watching run {run_id} after {timeout_s}s; it goes on", run_id=run_id
            )
    result = store.result(run_id)
    if result is None:  # the final event is written with the result, in one script
        raise RunTimedOut(f"run {run_id} has no result yet", run_id=run_id)
    return ending.refresh(store, result)


def result_lines(res: RunResult) -> list[str]:
    """The end of a watch: how the run ended and what it produced."""
    r = res.report
    ok = sum(1 for x in res.results if x.status.value == "ok")
    lines = [
        f"result: {res.status.value} in {duration(r.wall_s)}; {ok}/{len(res.results)} "
        f"subagents ok; {roi_summary(r)}"
    ]
    if res.winner is not None:
        lines.append(f"winner: #{res.winner.index} {res.winner.agent}: {_short(res.winner.output)}")
    if res.merged is not None:
        lines.append(f"merged: {_short(res.merged)}")
    if res.error:
        lines.append(f"note: {res.error}")
    return lines


def _short(value: object, limit: int = 300) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
