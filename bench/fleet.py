"""The fleet benchmark: n model calls (streams from a loopback model server) in flight at once,
each a subagent, on one worker process; and how soon a race's losers hang up.

    python -m bench.fleet                       # n=1000, 1 s streams
    python -m bench.fleet --quick               # n=50, short streams, 3 races
    python -m bench.fleet --only raw            # raw Celery rows only (threads, gevent)

Rows: raw Celery with ``-P threads -c n`` and ``-P gevent -c n`` (a blocking httpx stream per
task), and ours (an ``async def`` agent, one httpx.AsyncClient per process) on one worker process
of concurrency 1. Wall time is first send to last result; memory is the peak RSS of the worker
process and its children, sampled every 50 ms. The model server runs in a process of its own.
Races: 4 racers, racer 0 streams 2 events fast, the others 50 slowly (4.9 s); the win moment is
the winner's envelope ``finished_at`` (ours; ``RunResult.winner``) or the ``finished_at`` the raw
winner returned, the loser's end is when the model server saw its connection close
(``disconnected_at``). Writes ``bench/results/fleet-latest.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib.util
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from importlib import metadata

from bench.common import RESULTS, BenchError, interrupt_as_exit, ms, new_tag, table
from bench.fleet_agents import StreamOut
from bench.fleet_env import (
    LOSE_STREAM,
    MIB,
    FleetEnv,
    FleetRow,
    RaceRow,
    RssSampler,
    fleet_env,
    losers_ended,
    race_urls,
    server_peak,
    stream_url,
)
from bench.fleet_raw import raw_fleet, raw_race, raw_worker
from orchestrator import AgentStatus, RunResult, Task

CHUNKS = 10
NOT_INSTALLED = "gevent not installed"


def gevent_available() -> bool:
    return importlib.util.find_spec("gevent") is not None


# -- ours -------------------------------------------------------------------------------------


@contextlib.contextmanager
def ours_worker(env: FleetEnv, pool: str, concurrency: int) -> Iterator[str]:
    """One worker process of the stack: our runtime, with bench/fleet_agents.py's agents."""
    name = f"ours-{new_tag()[:4]}"
    env.stack.start_worker(name, pool=pool, concurrency=concurrency)
    try:
        env.stack.wait_ready([name], 90)
        yield name
    finally:
        env.stack.stop_process(name, 20.0)


def _chunks(output: object) -> int | None:
    try:
        return StreamOut.model_validate(output).chunks
    except ValueError:
        return None


def first_error(result: RunResult) -> str:
    """Why a run did not succeed, in a line."""
    for r in result.results:
        if r.status is not AgentStatus.OK or r.error is not None:
            err = r.error
            what = f"{err.type}: {err.message}" if err is not None else repr(r.output)[:120]
            return f"subagent {r.index} {r.status.value}: {what}"[:240]
    return f"run {result.status.value}: {result.error}"[:240]


def ours_spawn(
    env: FleetEnv, urls: list[str], timeout_s: float, batch_size: int | None = None
) -> tuple[float, RunResult]:
    """Spawn one ``fleet.stream`` per URL; (submit -> result s, the result). ``batch_size``
    None: our default (ORCH_AIO__BATCH_SIZE subagents a message); 1: one a message."""
    tasks = [Task("fleet.stream", {"url": u}) for u in urls]
    started = time.perf_counter()
    run = env.orch.spawn(tasks, preflight="off", deadline_s=timeout_s, batch_size=batch_size)
    result = run.wait(timeout_s=timeout_s + 30)
    return time.perf_counter() - started, result


def ours_fleet(
    env: FleetEnv, worker: str, pool: str, n: int, stream_s: float, batch_size: int | None
) -> FleetRow:
    per = "one a message" if batch_size == 1 else "batched, the default"
    row = FleetRow(f"ours, async agent ({pool} x1, {per})", pool, n)
    # Warm-up (imports, connections), and the check that the runtime runs async agents at all.
    _, warm = ours_spawn(env, [stream_url(env.model.url, new_tag(), 1, 0) for _ in range(5)], 60)
    if not warm.ok:
        row.note = f"warm-up failed: {first_error(warm)}"
        return row
    tag = new_tag()
    urls = [stream_url(env.model.url, f"{tag}-{i}", CHUNKS, stream_s * 100) for i in range(n)]
    with RssSampler(env.stack.procs[worker].pid) as rss:
        row.wall_s, result = ours_spawn(env, urls, stream_s * 10 + 300, batch_size)
    row.idle_rss_bytes, row.peak_rss_bytes, row.cpu_s = rss.idle_bytes, rss.peak_bytes, rss.cpu_s
    row.ok = sum(r.status is AgentStatus.OK and _chunks(r.output) == CHUNKS for r in result.results)
    row.server_peak = server_peak(env.model.records(f"{tag}-"))
    if not result.ok:
        row.note = first_error(result)
    return row


def ours_race(env: FleetEnv, trials: int) -> RaceRow:
    """Races of the async agent through our race pattern, one after another."""
    row = RaceRow("ours: race pattern, async agent")
    lose_s = LOSE_STREAM[0] * LOSE_STREAM[1] / 1000
    for _ in range(trials):
        tag = f"or{new_tag()}"
        tasks = [Task("fleet.stream", {"url": u}) for u in race_urls(env.model.url, tag)]
        run = env.orch.race(tasks, validate="fleet.any", deadline_s=lose_s + 60, preflight="off")
        result = run.wait(timeout_s=lose_s + 90)
        winner = result.winner
        if winner is None or winner.finished_at is None:
            row.note = f"race without a winner: {first_error(result)}"
            continue
        row.races += 1
        if winner.index != 0:
            row.note = f"racer {winner.index} won once (not the fast one)"
        losers = [f"{tag}-{i}" for i in range(len(tasks)) if i != winner.index]
        row.add_losers(losers_ended(env, tag, losers, lose_s + 30), losers, winner.finished_at)
    return row


# -- the report ---------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / MIB:.0f}" if n else "n/a"


def _s(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:.2f}"


def fleet_table(rows: list[FleetRow], stream_s: float) -> str:
    headers = ["mechanism", "n", "wall s", "stream s", "ok", "server peak open", "worker CPU s"]
    headers += ["idle RSS MiB", "peak RSS MiB", "notes"]
    one_stream_s = (CHUNKS - 1) * stream_s / 10
    cells = [
        [
            r.mechanism,
            str(r.n),
            _s(r.wall_s),
            f"{one_stream_s:.2f}",
            f"{r.ok}/{r.n}" if not math.isnan(r.wall_s) else "-",
            str(r.server_peak) if r.server_peak else "-",
            _s(r.cpu_s),
            _mib(r.idle_rss_bytes),
            _mib(r.peak_rss_bytes),
            r.note,
        ]
        for r in rows
    ]
    return table(headers, cells)


def race_table(rows: list[RaceRow]) -> str:
    headers = ["race", "races", "losers", "disconnected", "ran to the end", "never started"]
    headers += ["win->disconnect p50 ms", "p90 ms", "win->loser ended p50 ms", "notes"]
    cells = [
        [
            r.mechanism,
            str(r.races),
            str(r.losers),
            str(r.disconnected),
            str(r.completed),
            str(r.never_started),
            ms(r.win_to_disconnect.median),
            ms(r.win_to_disconnect.p90),
            ms(r.win_to_end.median),
            r.note,
        ]
        for r in rows
    ]
    return table(headers, cells)


def _versions() -> str:
    names = ("celery", "httpx", "gevent")
    found = []
    for name in names:
        with contextlib.suppress(metadata.PackageNotFoundError):
            found.append(f"{name} {metadata.version(name)}")
    return ", ".join(found)


# -- running ------------------------------------------------------------------------------------


def measure(args: argparse.Namespace, env: FleetEnv) -> tuple[list[FleetRow], list[RaceRow]]:
    fleets: list[FleetRow] = []
    races: list[RaceRow] = []
    n, stream_s = args.n, args.stream_s
    if args.only in ("all", "raw"):
        print(f"raw Celery, threads pool, n={n} ...", flush=True)
        with raw_worker(env, "threads", n) as worker:
            fleets.append(raw_fleet(env, worker, "threads", n, stream_s))
            if args.race_trials:
                print("raw Celery races (threads) ...", flush=True)
                races.append(raw_race(env, worker, args.race_trials))
        if gevent_available():
            print(f"raw Celery, gevent pool, n={n} ...", flush=True)
            with raw_worker(env, "gevent", n) as worker:
                fleets.append(raw_fleet(env, worker, "gevent", n, stream_s))
        else:
            fleets.append(
                FleetRow("raw Celery, gevent pool", "gevent", n, note="gevent not installed")
            )
    if args.only in ("all", "ours"):
        print(f"ours, async agent, n={n} ...", flush=True)
        with ours_worker(env, args.ours_pool, args.ours_concurrency) as worker:
            row = ours_fleet(env, worker, args.ours_pool, n, stream_s, None)
            fleets.append(row)
            fleets.append(ours_fleet(env, worker, args.ours_pool, n, stream_s, 1))
            if args.race_trials and not row.note.startswith("warm-up failed"):
                print("our races ...", flush=True)
                races.append(ours_race(env, args.race_trials))
            elif args.race_trials:
                races.append(
                    RaceRow("ours: race pattern, async agent", note="not run: " + row.note)
                )
    return fleets, races


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="streams at once")
    parser.add_argument("--stream-s", type=float, default=1.0, help="10 events, stream_s/10 apart")
    parser.add_argument("--race-trials", type=int, default=20, help="races per mechanism (0: none)")
    parser.add_argument("--only", choices=("all", "raw", "ours"), default="all")
    parser.add_argument("--ours-pool", default="prefork", help="pool of our worker process")
    parser.add_argument("--ours-concurrency", type=int, default=1)
    parser.add_argument(
        "--http-clients", type=int, default=1, help="httpx clients per worker process, in turn"
    )
    parser.add_argument(
        "--broker-max-connections",
        type=int,
        default=0,
        help="raw workers' Redis transport pool (0: kombu's default, 10)",
    )
    parser.add_argument("--quick", action="store_true", help="n=50, 0.2 s streams, 3 races")
    parser.add_argument("--out", type=str, default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.stream_s, args.race_trials = 50, 0.2, min(args.race_trials, 3)
    out = os.path.abspath(args.out)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    with interrupt_as_exit():
        try:
            with fleet_env(
                RESULTS / "logs" / f"fleet-{stamp}", args.http_clients, args.broker_max_connections
            ) as env:
                fleets, races = measure(args, env)
        except BenchError as exc:
            print(f"fleet benchmark failed: {exc}", file=sys.stderr)
            return 1
    header = (
        f"fleet: n={args.n} streams of {CHUNKS} events {args.stream_s * 100:g} ms apart, "
        f"{args.http_clients} httpx client(s) per worker process, raw workers' broker pool "
        f"{args.broker_max_connections or 'default'}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {_versions()}; "
        f"{dt.datetime.now().isoformat(timespec='seconds')}"
    )
    text = "\n\n".join(
        [header, fleet_table(fleets, args.stream_s)] + ([race_table(races)] if races else [])
    )
    print(text)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "fleet-latest.md")
    with open(path, "w") as f:
        f.write(text + "\n")
    print(f"\nwritten to {path}")
    return 0 if all(r.ok == r.n or r.note == NOT_INSTALLED for r in fleets) else 1


if __name__ == "__main__":
    sys.exit(main())
