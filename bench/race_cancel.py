"""Cancel latency of race-then-cancel: the winning moment to each loser actually stopped.

Ours (cancel flag + targeted interrupt) is measured beside a hand-written Celery race on the same
worker processes in the same run: a group of raw racers, the first result awaited on the result
backend's pub/sub, then ``revoke(terminate=True)`` for the rest. Each raw racer records its own
start and stop (on SIGTERM too) in Redis, so "stopped" means the same thing for both.

    python -m bench.race_cancel                 # prefork and threads pools, 20 trials each
    python -m bench.race_cancel --quick         # a few trials

The goal (issue 3) is a p50 under 20 ms for the prefork pool.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from celery import group

from bench.agents import RAW_RACE_PREFIX
from bench.common import (
    RESULTS,
    BenchError,
    Sample,
    Target,
    interrupt_as_exit,
    ms,
    new_tag,
    start_target,
    table,
    wait_until,
    warm_up,
)
from orchestrator import AgentStatus, Task

GOAL_P50_S = 0.020


@dataclass
class RaceTrial:
    """One race: what the caller saw and what each loser cost."""

    to_result_s: float  # submit -> the winner's result in the caller's hands
    latencies_s: list[float] = field(default_factory=list)  # per loser: win -> stopped
    revoke_to_stop_s: list[float] = field(default_factory=list)  # raw: revoke sent -> stopped
    wasted_s: float = 0.0  # run time of every loser
    after_win_s: float = 0.0  # run time of the losers after the win
    completed: int = 0  # losers that finished their work despite the win
    skipped: int = 0  # losers that never started
    disturbed: bool = False  # the quick racer did not win (a slot was busy): not counted


@dataclass
class RaceSpec:
    """Shape of a race: one quick winner, the rest slow."""

    width: int
    win_s: float = 0.15
    lose_s: float = 1.5
    mode: str = "cpu"

    def work(self, index: int, winner: int) -> float:
        return self.win_s if index == winner else self.lose_s


def ours_race(target: Target, spec: RaceSpec, winner: int) -> RaceTrial:
    """Race through the orchestrator; latencies from the losers' envelopes."""
    tasks = [
        Task("bench_racer", {"work_s": spec.work(i, winner), "mode": spec.mode})
        for i in range(spec.width)
    ]
    started = time.perf_counter()
    run = target.orch.race(
        tasks, validate="bench_any", deadline_s=spec.lose_s * 4 + 30, preflight="off"
    )
    result = run.wait(timeout_s=spec.lose_s * 4 + 30)
    trial = RaceTrial(to_result_s=time.perf_counter() - started)
    if result.winner is None:
        raise BenchError(f"race {run.id} ended {result.status.value}: {result.error}")
    store = target.orch.store
    envs = wait_until(
        lambda: (e := store.envelopes(run.id)) and len(e) == spec.width and e,
        spec.lose_s + 20,
        f"every racer of {run.id} to report",
    )
    win = result.winner.index
    trial.disturbed = win != winner
    win_at = min(
        (e.cancel_requested_at for i, e in envs.items() if i != win and e.cancel_requested_at),
        default=None,
    )
    for i, env in envs.items():
        if i == win:
            continue
        if env.started_at is None:
            trial.skipped += 1
            continue
        trial.wasted_s += env.ran_s
        if env.status is AgentStatus.OK:
            trial.completed += 1
        lat = env.cancel_latency_s
        if lat is None and win_at is not None and env.finished_at is not None:
            lat = max(0.0, env.finished_at - win_at)
        if lat is not None:
            trial.latencies_s.append(lat)
            trial.after_win_s += lat
    return trial


def raw_race(
    target: Target, spec: RaceSpec, winner: int, pool: str
) -> tuple[RaceTrial, str | None]:
    """A hand-written Celery race, and why revoke(terminate=True) was refused (if it was)."""
    raw = target.raw
    tag = new_tag()
    ids = [f"{tag}-{i}" for i in range(spec.width)]
    key = f"{RAW_RACE_PREFIX}:{tag}"
    refused: str | None = None
    with raw.results(tag) as stream:
        started = time.perf_counter()
        group(
            [
                raw.sig("bench.raw_racer", tag, i, spec.work(i, winner), spec.mode, task_id=t)
                for i, t in enumerate(ids)
            ]
        ).apply_async()
        first = stream.next(time.monotonic() + spec.lose_s * 4 + 30)
        trial = RaceTrial(to_result_s=time.perf_counter() - started)
        win = int(first["task_id"].rsplit("-", 1)[1])
        trial.disturbed = win != winner
        losers = [t for i, t in enumerate(ids) if i != win]
        revoked_at = time.time()
        if pool == "prefork":
            raw.app.control.revoke(losers, terminate=True)
        else:
            replies = raw.app.control.revoke(
                losers, terminate=True, reply=True, timeout=2.0, limit=len(target.workers)
            )
            refused = _refusal(replies)
    result: dict[str, Any] = first.get("result") or {}
    win_at = float(result.get("finished_at", revoked_at))
    loser_ix = [i for i in range(spec.width) if i != win]

    def all_stopped() -> dict[str, str] | None:
        rec: dict[str, str] = target.redis.hgetall(key)  # type: ignore[assignment]
        waiting = [i for i in loser_ix if f"start:{i}" in rec and f"stop:{i}" not in rec]
        unseen = [i for i in loser_ix if f"start:{i}" not in rec]
        if waiting or (unseen and time.time() - revoked_at < 2.0):
            return None
        return rec

    rec = wait_until(all_stopped, spec.lose_s + 20, f"raw racers of {tag} to stop", 0.01)
    target.redis.delete(key)
    for i in loser_ix:
        if f"start:{i}" not in rec:
            trial.skipped += 1
            continue
        start, stop = float(rec[f"start:{i}"]), float(rec[f"stop:{i}"])
        trial.wasted_s += stop - start
        if rec.get(f"how:{i}") == "completed":
            trial.completed += 1
        lat = max(0.0, stop - win_at)
        trial.latencies_s.append(lat)
        trial.after_win_s += lat
        trial.revoke_to_stop_s.append(max(0.0, stop - revoked_at))
    return trial, refused


def _refusal(replies: Any) -> str | None:
    for reply in replies or []:
        for answer in reply.values():
            if isinstance(answer, dict) and "error" in answer:
                text = str(answer["error"])
                return text.split("(", 1)[0] if "(" in text else text
    return None


@dataclass
class Row:
    """Aggregated trials of one mechanism on one pool and workload."""

    pool: str
    mode: str
    mechanism: str
    latency: Sample = field(default_factory=Sample)
    revoke_to_stop: Sample = field(default_factory=Sample)
    to_result: Sample = field(default_factory=Sample)
    wasted: Sample = field(default_factory=Sample)
    after_win: Sample = field(default_factory=Sample)
    completed: int = 0
    skipped: int = 0
    refused: str | None = None
    disturbed: int = 0

    def add(self, trial: RaceTrial) -> None:
        if trial.disturbed:
            self.disturbed += 1
            return
        for lat in trial.latencies_s:
            self.latency.add(lat)
        for lat in trial.revoke_to_stop_s:
            self.revoke_to_stop.add(lat)
        self.to_result.add(trial.to_result_s)
        self.wasted.add(trial.wasted_s)
        self.after_win.add(trial.after_win_s)
        self.completed += trial.completed
        self.skipped += trial.skipped

    def cells(self) -> list[str]:
        if self.refused:
            na = f"n/a ({self.refused})"
            latency = [na, na, "n/a"]
        else:
            rts = ms(self.revoke_to_stop.median) if len(self.revoke_to_stop) else "-"
            latency = [ms(self.latency.median), ms(self.latency.p99), rts]
        return [
            self.pool,
            self.mode,
            self.mechanism,
            *latency,
            ms(self.to_result.median),
            ms(self.wasted.median),
            ms(self.after_win.median),
            f"{self.completed}",
            f"{self.skipped}",
            f"{len(self.to_result)} ({len(self.latency)})",
            f"{self.disturbed}",
        ]


HEADERS = [
    "pool",
    "work",
    "mechanism",
    "cancel p50 ms",
    "cancel p99 ms",
    "revoke->stop p50 ms",
    "submit->winner p50 ms",
    "wasted/race p50 ms",
    "after win/race p50 ms",
    "losers completed",
    "losers skipped",
    "races (losers)",
    "not counted",
]


def settle(target: Target, slots: int, pool: str = "prefork") -> None:
    """Let killed pool processes be replaced and every slot be free again.

    A prefork pool replaces a killed child within about a second (its supervisor polls); a race
    started before that has a busy slot and its quick racer may not start first.
    """
    if pool == "prefork":
        concurrency = max(1, slots // max(1, len(target.workers)))
        try:
            import psutil
        except ImportError:
            time.sleep(1.0)
        else:

            def full() -> bool:
                for name in target.workers:
                    try:
                        parent = psutil.Process(target.stack.procs[name].pid)
                        kids = [c for c in parent.children() if c.status() != psutil.STATUS_ZOMBIE]
                    except psutil.NoSuchProcess:
                        return False
                    if len(kids) < concurrency:
                        return False
                return True

            wait_until(full, 15, "every pool process to be replaced", 0.02)
    warm_up(target, slots)


def measure_pool(
    target: Target,
    pool: str,
    modes: list[str],
    trials: int,
    spec_base: RaceSpec,
    raw_trials: int | None = None,
    progress: bool = False,
) -> list[Row]:
    """Alternate ours and raw races on the target's current workers."""
    rows: list[Row] = []
    for mode in modes:
        spec = RaceSpec(spec_base.width, spec_base.win_s, spec_base.lose_s, mode)
        ours = Row(pool, mode, "ours (flag + interrupt)")
        raw = Row(pool, mode, "raw revoke(terminate=True)")
        n_raw = trials if raw_trials is None else raw_trials
        for t in range(trials):
            winner = t % spec.width
            ours.add(ours_race(target, spec, winner))
            if t < n_raw:
                got, refused = raw_race(target, spec, winner, pool)
                raw.add(got)
                raw.refused = raw.refused or refused
                settle(target, spec.width, pool)
            if progress:
                print(f"  {pool}/{mode}: race {t + 1}/{trials}", flush=True)
        rows += [ours, raw]
    return rows


def render(rows: list[Row], header: str) -> str:
    lines = [header, "", table(HEADERS, [r.cells() for r in rows]), ""]
    for r in rows:
        if r.pool == "prefork" and r.mechanism.startswith("ours") and len(r.latency):
            p50 = r.latency.median
            verdict = "met" if p50 < GOAL_P50_S else "NOT met"
            lines.append(
                f"goal p50 < {GOAL_P50_S * 1000:.0f} ms (prefork, {r.mode}): {verdict} "
                f"({ms(p50)} ms over {len(r.latency)} losers)"
            )
    lines.append(
        "not counted = races whose quick racer did not win (a slot was still busy); "
        "cancel = winning moment -> loser stopped (ours: the winner's cancel request; raw: the "
        "winner's return). wasted = run time of all losers of one race; after win = the part of "
        "it spent after the win. n/a: the pool refuses revoke(terminate=True) and raw losers "
        "run to the end."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20, help="races per row")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument("--concurrency", type=int, default=2, help="pool size of each worker")
    parser.add_argument("--pools", default="prefork,threads")
    parser.add_argument("--modes", default="cpu,sleep", help="racer work: cpu loop, sleep")
    parser.add_argument("--win-s", type=float, default=0.15, help="the winner's work")
    parser.add_argument("--lose-s", type=float, default=1.5, help="each loser's work")
    parser.add_argument("--quick", action="store_true", help="3 trials, cpu work only")
    parser.add_argument("--redis-url", default=None, help="a Redis to use instead of embedded")
    args = parser.parse_args(argv)
    trials = 3 if args.quick else args.trials
    modes = ["cpu"] if args.quick else args.modes.split(",")
    width = args.workers * args.concurrency
    base = RaceSpec(width=width, win_s=args.win_s, lose_s=args.lose_s)
    rows: list[Row] = []
    with interrupt_as_exit():
        print(f"starting {args.workers} workers x{args.concurrency} ...", flush=True)
        target = start_target(
            "race", url=args.redis_url, workers=args.workers, concurrency=args.concurrency
        )
        try:
            for n, pool in enumerate(args.pools.split(",")):
                if n or pool != "prefork":
                    print(f"restarting workers with the {pool} pool ...", flush=True)
                    target.set_workers(args.workers, concurrency=args.concurrency, pool=pool)
                # Raw losers on a pool that refuses terminate run to the end: a few suffice.
                raw_trials = None if pool == "prefork" else min(trials, 3)
                rows += measure_pool(
                    target, pool, modes, trials, base, raw_trials, progress=sys.stdout.isatty()
                )
        finally:
            target.close()
    header = (
        f"race-then-cancel: width {width} ({args.workers} workers x{args.concurrency}), "
        f"winner works {args.win_s * 1000:.0f} ms, losers {args.lose_s * 1000:.0f} ms, "
        f"{trials} races per row, {'configured Redis' if args.redis_url else 'embedded server'}"
    )
    text = render(rows, header)
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "race_cancel.md").write_text(text + "\n")
    print(f"\nwritten to {RESULTS / 'race_cancel.md'}")
    ok = all(not math.isnan(r.latency.median) or r.refused for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
