"""The benchmark suite: our three patterns against raw Celery (same run, same worker processes),
and the same workloads in Ray and Dask when they are installed.

    python -m bench.suite              # embedded server (+ ORCH_BENCH_REDIS_URL when set)
    python -m bench.suite --quick      # tiny N, a few trials: checks that everything runs

Every figure is the median and p90 of repeated trials; comparisons are printed as ratios
(ours / theirs: below 1.00 we are faster). Raw Celery is measured at its best: results are awaited
on the result backend's pub/sub, never with ``GroupResult.get()``'s 0.5 s poll. Writes
``bench/results/latest.md`` and a plot of time vs N (SVG, and PNG when matplotlib is installed).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import inspect
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from celery import chord, group

from bench import others, plot
from bench.common import (
    REDIS_URL_ENV,
    RESULTS,
    BenchError,
    Sample,
    Target,
    interrupt_as_exit,
    ms,
    new_tag,
    ratio,
    start_target,
    table,
)
from bench.race_cancel import RaceSpec, ours_race, raw_race, settle
from bench.redis_profile import Trace, count_commands, idle_rate, monitor
from orchestrator import Orchestrator, RunResult, Task

#: Every run of ours ends by then (timed out if a subagent was lost), so a trial never hangs.
RUN_DEADLINE_S = 120.0
RATIO_NOTE = "ratios are ours / theirs: below 1.00 we are faster"


@dataclass
class Plan:
    """What to run and how often."""

    ns: list[int]
    trials: dict[int, int]
    workers: int
    concurrency: int
    throughput_procs: list[int]
    throughput_n: int
    throughput_trials: int
    race: RacePlan
    latency_trials: int
    commands_n: int
    ray: bool
    dask: bool
    quick: bool
    batching: bool = False
    out: Path = RESULTS

    @property
    def slots(self) -> int:
        return self.workers * self.concurrency


@dataclass
class RacePlan(RaceSpec):
    trials: int = 5


@dataclass
class Pair:
    """Ours and raw Celery for one figure."""

    ours: Sample = field(default_factory=Sample)
    raw: Sample = field(default_factory=Sample)


@dataclass
class TargetResults:
    """Everything measured on one target."""

    name: str
    spawn: dict[int, Pair] = field(default_factory=dict)
    batched: dict[int, Pair] = field(default_factory=dict)  # ours: batched spawn; raw: group
    gather: dict[int, Pair] = field(default_factory=dict)
    round_trip: Pair = field(default_factory=Pair)
    round_trip_local: Pair = field(default_factory=Pair)  # ours: expanded by the client
    first_start: dict[int, Pair] = field(default_factory=dict)
    tail: dict[int, Pair] = field(default_factory=dict)
    tail_async: dict[int, Pair] = field(default_factory=dict)  # ours: wait_async; raw: as tail
    hop: dict[int, Sample] = field(default_factory=dict)
    submit_call: dict[int, Sample] = field(default_factory=dict)
    finalize: dict[int, Sample] = field(default_factory=dict)
    race_result: Pair = field(default_factory=Pair)
    race_cancel: Pair = field(default_factory=Pair)
    throughput: dict[int, Pair] = field(default_factory=dict)
    commands: dict[str, float] = field(default_factory=dict)
    command_rows: list[list[str]] = field(default_factory=list)
    trace: Trace | None = None
    raw_trace: Trace | None = None
    shared: bool = False
    errors: list[str] = field(default_factory=list)


# -- one trial of each workload -----------------------------------------------------------------


def batch_size_for(n: int, slots: int) -> int:
    """Subagents per message for the batched rows: about four messages per pool slot."""
    return max(1, math.ceil(n / (4 * slots)))


def can_batch() -> bool:
    """Whether this version of the client takes ``batch_size``."""
    return "batch_size" in inspect.signature(Orchestrator.request).parameters


def ours_spawn(
    t: Target,
    n: int,
    res: TargetResults | None = None,
    batch_size: int | None = None,
    orch: Orchestrator | None = None,
) -> float:
    """Submit -> wait() returns, plus where the time went."""
    tasks = [Task("bench_noop", {"i": i}) for i in range(n)]
    extra: dict[str, Any] = {"batch_size": batch_size} if batch_size else {}
    t0_wall = time.time()
    t0 = time.perf_counter()
    run = (orch or t.orch).spawn(tasks, preflight="off", deadline_s=RUN_DEADLINE_S, **extra)
    submitted = time.perf_counter()
    result = run.wait(timeout_s=RUN_DEADLINE_S + 30)
    wall = time.perf_counter() - t0
    t_end_wall = t0_wall + wall
    _check(result, n)
    if res is None:
        return wall
    rec = t.orch.store.record(run.id)
    starts = [r.started_at for r in result.results if r.started_at]
    ends = [r.finished_at for r in result.results if r.finished_at]
    res.submit_call.setdefault(n, Sample()).add(submitted - t0)
    if "expanded_at" in rec:
        res.hop.setdefault(n, Sample()).add(float(rec["expanded_at"]) - t0_wall)
    if starts and ends:
        res.first_start.setdefault(n, Pair()).ours.add(min(starts) - t0_wall)
        res.tail.setdefault(n, Pair()).ours.add(t_end_wall - max(ends))
        res.finalize.setdefault(n, Sample()).add(result.finished_at - max(ends))
    return wall


def ours_spawn_async(t: Target, n: int, res: TargetResults) -> None:
    """The same spawn awaited with ``wait_async``: last finished -> the await returns."""

    async def go() -> tuple[RunResult, float]:
        run = await t.orch.spawn_async(
            [Task("bench_noop", {"i": i}) for i in range(n)],
            preflight="off",
            deadline_s=RUN_DEADLINE_S,
        )
        result = await run.wait_async(timeout_s=RUN_DEADLINE_S + 30)
        return result, time.time()

    result, returned = asyncio.run(go())
    _check(result, n)
    ends = [r.finished_at for r in result.results if r.finished_at]
    if ends:
        res.tail_async.setdefault(n, Pair()).ours.add(returned - max(ends))


def _check(result: RunResult, n: int) -> None:
    if not result.ok or len(result.results) != n:
        raise BenchError(f"run {result.run_id} ended {result.status.value}: {result.error}")


def raw_group(t: Target, n: int, res: TargetResults | None = None) -> float:
    """A raw group of N no-ops: send -> every result in hand."""
    raw = t.raw
    tag = new_tag()
    ids = [f"{tag}-{i}" for i in range(n)]
    with raw.results(tag) as stream:
        t0_wall = time.time()
        t0 = time.perf_counter()
        group([raw.sig("bench.raw_noop", i, task_id=x) for i, x in enumerate(ids)]).apply_async()
        got = stream.collect(set(ids), 300)
        wall = time.perf_counter() - t0
    if res is not None:
        ran = [float(m["result"]) for m in got.values() if m["status"] == "SUCCESS"]
        if ran:
            res.first_start.setdefault(n, Pair()).raw.add(min(ran) - t0_wall)
            res.tail.setdefault(n, Pair()).raw.add(t0_wall + wall - max(ran))
    return wall


def ours_gather(t: Target, n: int) -> float:
    tasks = [Task("bench_noop", {"i": i}) for i in range(n)]
    t0 = time.perf_counter()
    run = t.orch.gather(tasks, merge="bench_count", preflight="off", deadline_s=RUN_DEADLINE_S)
    result = run.wait(timeout_s=RUN_DEADLINE_S + 30)
    wall = time.perf_counter() - t0
    if not result.ok or (result.merged or {}).get("n") != n:
        raise BenchError(f"gather {run.id} ended {result.status.value}: {result.error}")
    return wall


def raw_chord(t: Target, n: int) -> float:
    raw = t.raw
    tag = new_tag()
    body_id = f"{tag}-body"
    with raw.results(tag) as stream:
        t0 = time.perf_counter()
        header = [raw.sig("bench.raw_noop", i, task_id=f"{tag}-{i}") for i in range(n)]
        chord(header, raw.sig("bench.raw_count", task_id=body_id)).apply_async()
        got = stream.collect({body_id}, 300)
        wall = time.perf_counter() - t0
    if got[body_id].get("result") != n:
        raise BenchError(f"raw chord body returned {got[body_id].get('result')!r}, not {n}")
    return wall


def raw_round_trip(t: Target, res: TargetResults) -> float:
    """One raw task: send -> its result in hand (the task returns when it ran)."""
    raw = t.raw
    tag = new_tag()
    with raw.results(tag) as stream:
        t0_wall = time.time()
        t0 = time.perf_counter()
        raw.sig("bench.raw_noop", 0, task_id=f"{tag}-0").apply_async()
        meta = stream.collect({f"{tag}-0"}, 60)[f"{tag}-0"]
        wall = time.perf_counter() - t0
    if meta["status"] == "SUCCESS":
        ran = float(meta["result"])
        res.first_start.setdefault(1, Pair()).raw.add(ran - t0_wall)
        res.tail.setdefault(1, Pair()).raw.add(t0_wall + wall - ran)
    return wall


# -- phases ------------------------------------------------------------------------------------


def say(text: str) -> None:
    print(text, flush=True)


def phase_fanout(t: Target, plan: Plan, res: TargetResults) -> None:
    for n in plan.ns:
        spawn = res.spawn.setdefault(n, Pair())
        gather = res.gather.setdefault(n, Pair())
        batch = batch_size_for(n, plan.slots) if plan.batching else 0
        batch = batch if batch > 1 else 0  # one per message is the plain spawn
        for _ in range(plan.trials[n]):
            # Alternate, so drift in machine load hits both sides alike.
            spawn.ours.add(ours_spawn(t, n, res))
            spawn.raw.add(raw_group(t, n, res))
            if batch:
                res.batched.setdefault(n, Pair()).ours.add(ours_spawn(t, n, batch_size=batch))
            gather.ours.add(ours_gather(t, n))
            gather.raw.add(raw_chord(t, n))
        if batch:
            res.batched[n].raw = spawn.raw
        say(
            f"  N={n}: spawn {ms(spawn.ours.median)} ms vs group {ms(spawn.raw.median)} ms; "
            f"gather {ms(gather.ours.median)} ms vs chord {ms(gather.raw.median)} ms"
            + (f"; batched spawn {ms(res.batched[n].ours.median)} ms" if batch else "")
        )


def phase_latency(t: Target, plan: Plan, res: TargetResults) -> None:
    # The same, expanded by the client itself (ORCH_CLIENT_EXPAND_MAX_N): no coordinator hop.
    local = Orchestrator(t.orch.settings.model_copy(update={"client_expand_max_n": 1}))
    widest = max(plan.ns)
    for _ in range(plan.trials[widest]):
        ours_spawn_async(t, widest, res)
    if widest in res.tail_async and widest in res.tail:
        res.tail_async[widest].raw = res.tail[widest].raw
    try:
        for _ in range(plan.latency_trials):
            res.round_trip.ours.add(ours_spawn(t, 1, res))
            res.round_trip.raw.add(raw_round_trip(t, res))
            if can_expand_in_client():
                res.round_trip_local.ours.add(ours_spawn(t, 1, orch=local))
        res.round_trip_local.raw = res.round_trip.raw
    finally:
        local.close()
    say(
        f"  round trip: {ms(res.round_trip.ours.median)} ms vs raw "
        f"{ms(res.round_trip.raw.median)} ms"
        + (
            f"; expanded by the client {ms(res.round_trip_local.ours.median)} ms"
            if res.round_trip_local.ours.values
            else ""
        )
    )


def can_expand_in_client() -> bool:
    """Whether this version's settings have ``client_expand_max_n``."""
    from orchestrator import Settings

    return "client_expand_max_n" in Settings.model_fields


def phase_race(t: Target, plan: Plan, res: TargetResults) -> None:
    spec = plan.race
    for trial in range(spec.trials):
        winner = trial % spec.width
        ours = ours_race(t, spec, winner)
        raw, _ = raw_race(t, spec, winner, "prefork")
        settle(t, spec.width)  # pool processes killed by SIGTERM are replaced
        if ours.disturbed or raw.disturbed:
            continue  # the quick racer did not win: a slot was busy
        res.race_result.ours.add(ours.to_result_s)
        res.race_result.raw.add(raw.to_result_s)
        for lat in ours.latencies_s:
            res.race_cancel.ours.add(lat)
        for lat in raw.latencies_s:
            res.race_cancel.raw.add(lat)
    say(
        f"  race: winner {ms(res.race_result.ours.median)} ms vs {ms(res.race_result.raw.median)}"
        f" ms; cancel p50 {ms(res.race_cancel.ours.median)} ms vs "
        f"{ms(res.race_cancel.raw.median)} ms"
    )


def phase_commands(t: Target, plan: Plan, res: TargetResults) -> None:
    n = plan.commands_n
    idle = idle_rate(t)
    ours = count_commands(t, n, lambda: ours_spawn(t, n), idle)
    raw = count_commands(t, n, lambda: raw_group(t, n), idle)
    res.commands = {"ours": ours.per_subagent(), "raw": raw.per_subagent()}
    names = sorted(
        set(ours.by_command) | set(raw.by_command),
        key=lambda c: -(ours.by_command[c] + raw.by_command[c]),
    )
    for cmd in names[:14]:
        o, r = ours.by_command[cmd] / n, raw.by_command[cmd] / n
        res.command_rows.append([cmd, f"{o:.2f}", f"{r:.2f}", f"{o - r:+.2f}"])
    if not t.shared:
        try:
            with monitor(t, n) as trace:
                ours_spawn(t, n)
            res.trace = trace
            with monitor(t, n) as raw_trace:
                raw_group(t, n)
            res.raw_trace = raw_trace
        except Exception as exc:  # the trace is a profile aid; never fail the suite for it
            say(f"  (MONITOR trace skipped: {exc})")
    say(f"  commands per subagent: ours {res.commands['ours']:.1f}, raw {res.commands['raw']:.1f}")


def phase_throughput(t: Target, plan: Plan, res: TargetResults) -> None:
    n = plan.throughput_n
    for procs in plan.throughput_procs:
        t.set_workers(procs, concurrency=1)
        pair = res.throughput.setdefault(procs, Pair())
        for _ in range(plan.throughput_trials):
            pair.ours.add(n / ours_spawn(t, n))
            pair.raw.add(n / raw_group(t, n))
        say(f"  {procs} worker processes: {pair.ours.median:.0f}/s vs raw {pair.raw.median:.0f}/s")


def run_target(name: str, url: str | None, plan: Plan) -> TargetResults:
    where = "embedded valkey-server" if url is None else "configured Redis"
    say(f"== {name}: {where}, {plan.workers} workers x{plan.concurrency} (prefork)")
    t = start_target(
        name,
        url=url,
        workers=plan.workers,
        concurrency=plan.concurrency,
        log_dir=plan.out / "logs" / f"{name}-{new_tag()[:6]}",
    )
    res = TargetResults(name, shared=t.shared)
    try:
        # Throughput replaces the worker processes: it goes last.
        for phase in (phase_fanout, phase_latency, phase_race, phase_commands, phase_throughput):
            label = phase.__name__.removeprefix("phase_")
            started = time.monotonic()
            try:
                phase(t, plan, res)
            except Exception as exc:  # one broken phase must not lose the others' figures
                res.errors.append(f"{name}/{label}: {type(exc).__name__}: {str(exc)[:300]}")
                say(f"  {label} FAILED: {type(exc).__name__}: {exc} (logs: {t.stack.log_dir})")
                continue
            say(f"  ({label} took {time.monotonic() - started:.1f}s)")
    finally:
        t.close()
    return res


# -- report ------------------------------------------------------------------------------------


def pair_cells(p: Pair) -> list[str]:
    return [
        ms(p.ours.median),
        ms(p.ours.p90),
        ms(p.raw.median),
        ms(p.raw.p90),
        ratio(p.ours.median, p.raw.median),
        ratio(p.ours.p90, p.raw.p90),
    ]


PAIR_HEADERS = [
    "ours p50 ms",
    "ours p90 ms",
    "raw p50 ms",
    "raw p90 ms",
    "ours/raw p50",
    "ours/raw p90",
]


def render(
    results: list[TargetResults],
    ray: others.Figures | str | None,
    dask: others.Figures | str | None,
    plan: Plan,
) -> str:
    out: list[str] = []
    rows: list[list[str]] = []
    for res in results:
        for n, p in res.spawn.items():
            rows.append([res.name, "parallel-spawn vs group", str(n), *pair_cells(p)])
        for n, p in res.batched.items():
            label = f"batched spawn (x{batch_size_for(n, plan.slots)}) vs group"
            rows.append([res.name, label, str(n), *pair_cells(p)])
        for n, p in res.gather.items():
            rows.append([res.name, "gather-then-merge vs chord", str(n), *pair_cells(p)])
        rows.append(
            [res.name, "race: submit -> winner", str(plan.race.width), *pair_cells(res.race_result)]
        )
        rows.append(
            [res.name, "race: cancel latency", str(plan.race.width), *pair_cells(res.race_cancel)]
        )
    out += ["### Ours vs raw Celery (same run, same worker processes)", ""]
    out += [table(["target", "workload", "N", *PAIR_HEADERS], rows), ""]

    rows = []
    for res in results:
        rows.append([res.name, "single-subagent round trip", "1", *pair_cells(res.round_trip)])
        if res.round_trip_local.ours.values:
            label = "round trip, expanded by the client"
            rows.append([res.name, label, "1", *pair_cells(res.round_trip_local)])
        for label, by_n in (
            ("submit -> first subagent started", res.first_start),
            ("last subagent finished -> wait() returns", res.tail),
            ("last subagent finished -> wait_async() returns", res.tail_async),
        ):
            rows += [[res.name, label, str(n), *pair_cells(by_n[n])] for n in sorted(by_n)]
    out += ["### Latency", ""]
    out += [table(["target", "figure", "N", *PAIR_HEADERS], rows), ""]

    rows = []
    for res in results:
        for n in sorted(res.submit_call):
            cells = [res.name, str(n)]
            for sample in (res.submit_call.get(n), res.hop.get(n), res.finalize.get(n)):
                cells.append(ms(sample.median) if sample else "n/a")
            rows.append(cells)
    out += ["### Where our time goes (parallel-spawn, p50)", ""]
    out += [
        table(
            [
                "target",
                "N",
                "client submit() ms",
                "submit -> coordinator expanded ms",
                "last finished -> run finalised ms",
            ],
            rows,
        ),
        "",
    ]

    rows = []
    for res in results:
        for procs, p in res.throughput.items():
            rows.append(
                [
                    res.name,
                    str(procs),
                    f"{p.ours.median:.0f}",
                    f"{p.ours.p90:.0f}",
                    f"{p.raw.median:.0f}",
                    f"{p.raw.p90:.0f}",
                    ratio(p.raw.median, p.ours.median),
                ]
            )
    out += [f"### Throughput (parallel-spawn of {plan.throughput_n} vs group), per second", ""]
    out += [
        table(
            [
                "target",
                "worker processes",
                "ours p50/s",
                "ours p90/s",
                "raw p50/s",
                "raw p90/s",
                "ours/raw time p50",
            ],
            rows,
        ),
        "",
    ]

    out += _commands_section(results, plan)
    out += _others_section(results, ray, dask, plan)
    errors = [e for res in results for e in res.errors]
    if errors:
        out += ["### Errors (figures of these phases are missing or partial)", ""]
        out += [f"- {e}" for e in errors] + [""]
    return "\n".join(out)


def _commands_section(results: list[TargetResults], plan: Plan) -> list[str]:
    out = [f"### Redis commands per subagent (parallel-spawn of {plan.commands_n})", ""]
    rows = []
    for res in results:
        if not res.commands:
            continue
        o, r = res.commands["ours"], res.commands["raw"]
        note = " (shared server: noisy)" if res.shared else ""
        rows.append(
            [
                res.name + note,
                f"{o:.1f}",
                f"{r:.1f}",
                f"{o - r:+.1f}",
                f"{r + PROTOCOL_MIN_EXTRA:.1f}",
                ratio(o, r + PROTOCOL_MIN_EXTRA),
            ]
        )
    out += [
        table(
            [
                "target",
                "ours",
                "raw Celery",
                "ours - raw",
                "protocol minimum",
                "ours/minimum",
            ],
            rows,
        ),
        "",
        f"protocol minimum = raw Celery's own commands + {PROTOCOL_MIN_EXTRA:.0f} round trips "
        "per subagent (one script at start: claim + cancel check; one at finish: record + count "
        "+ race claim); per-run records are amortised over N. Commands run inside Lua scripts "
        "count in INFO commandstats.",
        "",
    ]
    for res in results:
        if res.command_rows:
            out += [f"commands per subagent by name ({res.name}):", ""]
            out += [table(["command", "ours", "raw", "diff"], res.command_rows), ""]
        if res.trace is not None and res.raw_trace is not None:
            out += [f"round trips per subagent by process, from MONITOR ({res.name}):", ""]
            rows = []
            for label, tr in (("ours", res.trace), ("raw", res.raw_trace)):
                for role in tr.roles():
                    if role == "(lua)":
                        continue
                    top = ", ".join(f"{c} {v:.2f}" for c, v in tr.top(role, 6))
                    rows.append([label, role, f"{tr.per_subagent(lua=False, role=role):.2f}", top])
                rows.append(
                    [
                        label,
                        "inside Lua scripts",
                        f"{tr.per_subagent(lua=True):.2f}",
                        "(not round trips)",
                    ]
                )
            out += [table(["side", "process", "per subagent", "top commands"], rows), ""]
    return out


#: Our protocol's minimum on top of Celery: one script when a subtask starts, one when it ends.
PROTOCOL_MIN_EXTRA = 2.0


def _others_section(
    results: list[TargetResults],
    ray: others.Figures | str | None,
    dask: others.Figures | str | None,
    plan: Plan,
) -> list[str]:
    base = results[0]
    out = [f"### Beside Ray and Dask ({base.name} target, {plan.slots} worker processes each)", ""]
    frameworks = [("Ray", ray), ("Dask", dask)]
    rows = []
    for n in plan.ns:
        cells = [
            f"fan-out of {n} no-ops",
            ms(base.spawn[n].ours.median),
            ms(base.spawn[n].raw.median),
        ]
        for _, figs in frameworks:
            if isinstance(figs, others.Figures) and n in figs.fanout:
                cells += [
                    ms(figs.fanout[n].median),
                    ratio(base.spawn[n].ours.median, figs.fanout[n].median),
                ]
            else:
                cells += ["n/a", "n/a"]
        rows.append(cells)
        if n in base.batched:
            ours_b = base.batched[n].ours.median
            label = f"fan-out of {n}, ours batched x{batch_size_for(n, plan.slots)}"
            cells = [label, ms(ours_b), ms(base.spawn[n].raw.median)]
            for _, figs in frameworks:
                if isinstance(figs, others.Figures) and n in figs.fanout:
                    theirs = figs.fanout[n].median
                    cells += [ms(theirs), ratio(ours_b, theirs)]
                else:
                    cells += ["n/a", "n/a"]
            rows.append(cells)
    for label, ours_s, raw_s, attr in (
        ("race: submit -> winner", base.race_result.ours, base.race_result.raw, "race_result"),
        ("race: cancel latency p50", base.race_cancel.ours, base.race_cancel.raw, "race_cancel"),
    ):
        cells = [label, ms(ours_s.median), ms(raw_s.median)]
        for _, figs in frameworks:
            if isinstance(figs, others.Figures) and len(getattr(figs, attr)):
                other = getattr(figs, attr)
                cells += [ms(other.median), ratio(ours_s.median, other.median)]
            else:
                cells += ["n/a", "n/a"]
        rows.append(cells)
    out += [
        table(
            ["workload (p50 ms)", "ours", "raw Celery", "Ray", "ours/Ray", "Dask", "ours/Dask"],
            rows,
        ),
        "",
    ]
    for name, figs in frameworks:
        if isinstance(figs, others.Figures):
            extra = f"; losers that ran to completion: {figs.race_completed}"
            out.append(f"{name}: {figs.note}{extra}")
        else:
            out.append(f"{name}: skipped: {figs}")
    out.append("")
    return out


def machine() -> str:
    def version(pkg: str) -> str:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return "-"

    return (
        f"{platform.node()} ({platform.system()} {platform.release()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs), Python {platform.python_version()}, celery {version('celery')}, "
        f"kombu {version('kombu')}, redis-py {version('redis')}"
    )


# -- main --------------------------------------------------------------------------------------


def make_plan(args: argparse.Namespace) -> Plan:
    if args.quick:
        ns = [int(x) for x in (args.n or "5").split(",")]
        trials = {n: args.trials or 2 for n in ns}
        race = RacePlan(
            width=args.workers * args.concurrency, win_s=0.05, lose_s=0.6, trials=args.trials or 1
        )
        return Plan(
            ns=ns,
            trials=trials,
            workers=args.workers,
            concurrency=args.concurrency,
            throughput_procs=[1, 2],
            throughput_n=10,
            throughput_trials=1,
            race=race,
            latency_trials=args.trials or 3,
            commands_n=max(ns),
            ray=args.ray == "yes",
            dask=args.dask == "yes",
            quick=True,
            batching=can_batch(),
        )
    ns = [int(x) for x in (args.n or "10,100,1000").split(",")]

    def default_trials(n: int) -> int:
        return 15 if n <= 10 else 10 if n <= 100 else 5

    trials = {n: args.trials or default_trials(n) for n in ns}
    race = RacePlan(
        width=args.workers * args.concurrency, win_s=0.1, lose_s=1.0, trials=args.trials or 7
    )
    return Plan(
        ns=ns,
        trials=trials,
        workers=args.workers,
        concurrency=args.concurrency,
        throughput_procs=[1, 2, 4],
        throughput_n=200,
        throughput_trials=3,
        race=race,
        latency_trials=args.trials or 20,
        commands_n=100,
        ray=args.ray != "no",
        dask=args.dask != "no",
        quick=False,
        batching=can_batch(),
    )


def run_others(plan: Plan, redis_url: str) -> tuple[others.Figures | str, others.Figures | str]:
    def one(name: str, module: str, enabled: bool, fn: object) -> others.Figures | str:
        if not enabled:
            return "--quick (pass --ray yes / --dask yes to include)" if plan.quick else "disabled"
        missing = others.available(module)
        if missing:
            say(f"== {name}: skipped, {missing}")
            return missing
        say(f"== {name}: {plan.slots} worker processes")
        started = time.monotonic()
        try:
            figs: others.Figures = fn(plan.slots, plan.ns, plan.trials, plan.race, redis_url)  # type: ignore[operator]
        except Exception as exc:
            say(f"  {name} failed: {type(exc).__name__}: {exc}")
            return f"failed: {type(exc).__name__}: {str(exc)[:200]}"
        say(f"  done in {time.monotonic() - started:.0f}s")
        return figs

    ray = one("Ray", "ray", plan.ray, others.run_ray)
    dask = one("Dask", "distributed", plan.dask, others.run_dask)
    return ray, dask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny N, few trials (for tests)")
    parser.add_argument("--n", default=None, help="comma-separated widths (default 10,100,1000)")
    parser.add_argument("--trials", type=int, default=None, help="trials per figure")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--ray", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument("--dask", choices=["auto", "yes", "no"], default="auto")
    parser.add_argument(
        "--redis-url",
        default=os.environ.get(REDIS_URL_ENV),
        help=f"also run on this Redis (default: ${REDIS_URL_ENV})",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args(argv)
    plan = make_plan(args)
    plan.out = args.out
    started = time.monotonic()
    results: list[TargetResults] = []
    ray: others.Figures | str | None = None
    dask: others.Figures | str | None = None
    with interrupt_as_exit():
        targets: list[tuple[str, str | None]] = [("embedded", None)]
        if args.redis_url:
            targets.append(("redis", args.redis_url))
        for name, url in targets:
            results.append(run_target(name, url, plan))
        if plan.ray or plan.dask:
            # Racers record their stops in a Redis: a private one, started for this phase.
            from orchestrator import EmbeddedRedis

            with EmbeddedRedis() as server:
                ray, dask = run_others(plan, server.url)
        else:
            ray, dask = run_others(plan, "")  # both disabled: nothing connects
    body = render(results, ray, dask, plan)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    header = [
        "## Benchmark: ours vs raw Celery, Ray, Dask",
        "",
        f"{stamp} on {machine()}.",
        f"{plan.workers} Celery workers x{plan.concurrency} (prefork); "
        f"{'quick run' if plan.quick else 'full run'}; trials per N: "
        + ", ".join(f"{n}: {k}" for n, k in plan.trials.items())
        + f"; {RATIO_NOTE}. Suite took {time.monotonic() - started:.0f}s.",
        "",
    ]
    text = "\n".join(header) + "\n" + body
    print()
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.md").write_text(text + "\n")
    series = plot_series(results[0], ray, dask)
    written = plot.write(series, args.out / "latest", title="time vs N (p50), " + results[0].name)
    print(f"\nwritten: {args.out / 'latest.md'}, " + ", ".join(str(p) for p in written))
    return 1 if any(res.errors for res in results) else 0


def plot_series(
    res: TargetResults, ray: others.Figures | str | None, dask: others.Figures | str | None
) -> dict[str, list[tuple[int, float]]]:
    series = {
        "ours (parallel-spawn)": [(n, p.ours.median) for n, p in sorted(res.spawn.items())],
        "raw Celery group": [(n, p.raw.median) for n, p in sorted(res.spawn.items())],
    }
    if res.batched:
        series["ours, batched"] = [(n, p.ours.median) for n, p in sorted(res.batched.items())]
    for name, figs in (("Ray", ray), ("Dask", dask)):
        if isinstance(figs, others.Figures):
            series[name] = [(n, s.median) for n, s in sorted(figs.fanout.items())]
    return {k: [(n, v) for n, v in pts if not math.isnan(v)] for k, pts in series.items()}


if __name__ == "__main__":
    sys.exit(main())
