"""The fleet benchmark's raw Celery side (bench/fleet.py runs it).

A raw worker is ``celery -A bench.fleet_worker worker -P threads|gevent -c N`` on the same server
as ours; its results are awaited on the result backend's pub/sub (bench/common.py ``RawCelery``),
never polled.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

from celery import group

from bench.common import ROOT, BenchError, new_tag
from bench.fleet_env import (
    LOSE_STREAM,
    RACE_WIDTH,
    FleetEnv,
    FleetRow,
    RaceRow,
    RssSampler,
    losers_ended,
    race_urls,
    server_peak,
    stream_url,
)

#: How long a fleet's results are awaited beyond its streams' own length.
RESULT_WAIT_S = 120.0


def start_raw_worker(env: FleetEnv, pool: str, concurrency: int) -> str:
    """``celery worker -P <pool> -c <concurrency>`` on the agents' queue, ready for work."""
    name = f"raw-{pool}-{new_tag()[:4]}"
    argv = ["-A", "bench.fleet_worker", "worker", "-P", pool, "-c", str(concurrency)]
    argv += ["-Q", env.settings.agent_queue, "-n", f"{name}@%h", "-l", "INFO"]
    argv += ["--without-mingle", "--without-gossip"]
    with open(env.log_dir / f"{name}.log", "ab") as log:
        env.stack.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "celery", *argv],
            env=env.stack.env(),
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    # Ready once it has run a few: imports done, connections made.
    _, _, warm = raw_streams(env, name, 20, (1, 0.0), timeout_s=90)
    if len(warm) < 20:
        raise BenchError(f"{name} ran {len(warm)} of 20 warm-up streams: {env.stack.tail(name)}")
    return name


def raw_streams(
    env: FleetEnv, worker: str, n: int, shape: tuple[int, float], timeout_s: float
) -> tuple[str, float, list[dict[str, Any]]]:
    """Send ``n`` raw streams as one group; (tag, s from first send to last result, results).

    Results missing at the deadline are left out; fails early if the worker process exits.
    """
    tag = new_tag()
    ids = [f"{tag}-{i}" for i in range(n)]
    sigs = [
        env.raw.sig("fleet.raw_stream", stream_url(env.model.url, t, *shape), task_id=t)
        for t in ids
    ]
    proc = env.stack.procs[worker]
    got: dict[str, dict[str, Any]] = {}
    with env.raw.results(tag) as stream:
        started = last = time.perf_counter()
        group(sigs).apply_async()
        deadline = time.monotonic() + timeout_s
        while len(got) < n and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(
                    f"{worker} exited with {proc.returncode}: {env.stack.tail(worker)}"
                )
            with contextlib.suppress(BenchError):  # a second's silence: check the worker again
                meta = stream.next(min(deadline, time.monotonic() + 1.0))
                got[meta["task_id"]] = meta
                last = time.perf_counter()
    return tag, last - started, list(got.values())


def log_trouble(env: FleetEnv, worker: str) -> str:
    """What went wrong in a worker's log, counted (empty when nothing did)."""
    text = env.stack.log(worker)
    signs = {
        "acks failed": "Couldn't ack",
        "broker connection lost": "Connection to broker lost",
        "redis pool exhausted": "MaxConnectionsError",
        "task errors": "raised unexpected",
    }
    found = [f"{text.count(sign)} {what}" for what, sign in signs.items() if sign in text]
    return "worker log: " + ", ".join(found) if found else ""


@contextlib.contextmanager
def raw_worker(env: FleetEnv, pool: str, concurrency: int) -> Iterator[str]:
    name = start_raw_worker(env, pool, concurrency)
    try:
        yield name
    finally:
        env.stack.stop_process(name, 20.0)


def raw_fleet(env: FleetEnv, worker: str, pool: str, n: int, stream_s: float) -> FleetRow:
    """n raw streams at once on one ``-P <pool> -c <n>`` worker."""
    row = FleetRow(f"raw Celery, {pool} pool", pool, n)
    timeout_s = stream_s * 10 + RESULT_WAIT_S
    with RssSampler(env.stack.procs[worker].pid) as rss:
        tag, row.wall_s, results = raw_streams(env, worker, n, (10, stream_s * 100), timeout_s)
    row.idle_rss_bytes, row.peak_rss_bytes, row.cpu_s = rss.idle_bytes, rss.peak_bytes, rss.cpu_s
    good = [
        m["status"] == "SUCCESS" and (m.get("result") or {}).get("chunks") == 10 for m in results
    ]
    row.ok = sum(good)
    bad = [m for m, g in zip(results, good, strict=True) if not g]
    notes = []
    if len(results) < n:
        notes.append(f"{n - len(results)} without a result after {timeout_s:.0f} s")
    if bad:
        notes.append(f"{bad[0]['status']}: {str(bad[0].get('result'))[:160]}")
    if trouble := log_trouble(env, worker):
        notes.append(trouble)
    row.note = "; ".join(notes)
    row.server_peak = server_peak(env.model.records(f"{tag}-"))
    return row


def raw_race(env: FleetEnv, worker: str, trials: int) -> RaceRow:
    """The race by hand: a group, the first result wins, ``revoke(terminate=True)`` the rest.

    All races are sent first, one after another (the worker has a slot for every racer), and
    the losers' streams are awaited together at the end: on the threads pool they run on.
    """
    row = RaceRow("raw Celery threads: first result, revoke(terminate=True)")
    races: list[tuple[str, list[str], float]] = []
    for _ in range(trials):
        tag = f"rr{new_tag()}"
        ids = [f"{tag}-{i}" for i in range(RACE_WIDTH)]
        urls = race_urls(env.model.url, tag)
        with env.raw.results(tag) as stream:
            group(
                [
                    env.raw.sig("fleet.raw_stream", u, task_id=t)
                    for u, t in zip(urls, ids, strict=True)
                ]
            ).apply_async()
            first = stream.next(time.monotonic() + 60)
        losers = [t for t in ids if t != first["task_id"]]
        # To the racers' worker only: the coordinator answers broadcasts too ("tasks unknown").
        replies = env.raw.app.control.revoke(
            losers,
            terminate=True,
            reply=True,
            timeout=2.0,
            destination=[f"{worker}@{socket.gethostname()}"],
        )
        row.note = row.note or _reply_text(replies)
        races.append((tag, losers, float(first["result"]["finished_at"])))
        row.races += 1
    lose_s = LOSE_STREAM[0] * LOSE_STREAM[1] / 1000
    for tag, losers, win_at in races:
        row.add_losers(losers_ended(env, tag, losers, lose_s + 30), losers, win_at)
    return row


def _reply_text(replies: Any) -> str:
    """What the worker answered to the revoke."""
    texts = [str(answer) for reply in replies or [] for answer in reply.values()]
    return "worker replied: " + "; ".join(texts)[:200] if texts else "no reply to revoke"
