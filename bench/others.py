"""The same fan-out and race workloads on Ray and Dask, when they are installed (``bench`` extra).

Each framework gets as many worker processes as the Celery targets have pool slots. Racers record
their start and stop in the benchmark's Redis, like the raw Celery racers do.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.agents import RAW_RACE_PREFIX, work
from bench.common import ROOT, Sample, new_tag, wait_until


def available(module: str) -> str | None:
    """None when importable, else why not (printed in the table)."""
    if importlib.util.find_spec(module) is None:
        return "not installed (pip install -e '.[bench]')"
    return None


def noop(i: int) -> int:
    """The no-op task of both frameworks."""
    return i


def racer(redis_url: str, trial: str, index: int, work_s: float, mode: str) -> float:
    """A racer that records when it started and stopped (also when interrupted)."""
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    key = f"{RAW_RACE_PREFIX}:{trial}"
    r.hset(key, f"start:{index}", repr(time.time()))
    how = "completed"
    try:
        work(work_s, mode)
    except BaseException:
        how = "interrupted"
        raise
    finally:
        r.hset(key, mapping={f"stop:{index}": repr(time.time()), f"how:{index}": how})
        r.expire(key, 3600)
        r.close()
    return time.time()


@dataclass
class Figures:
    """What one framework measured."""

    fanout: dict[int, Sample] = field(default_factory=dict)
    race_result: Sample = field(default_factory=Sample)
    race_cancel: Sample = field(default_factory=Sample)
    race_completed: int = 0
    note: str = ""


def _race_stops(
    r: redis.Redis, trial: str, losers: list[int], win_at: float, lose_s: float
) -> tuple[list[float], int]:
    key = f"{RAW_RACE_PREFIX}:{trial}"

    def stopped() -> dict[str, str] | None:
        rec: dict[str, str] = r.hgetall(key)  # type: ignore[assignment]
        waiting = [i for i in losers if f"start:{i}" in rec and f"stop:{i}" not in rec]
        unseen = [i for i in losers if f"start:{i}" not in rec]
        if waiting or (unseen and time.time() - win_at < 2.0):
            return None
        return rec

    rec = wait_until(stopped, lose_s + 30, f"racers of {trial} to stop", 0.01)
    r.delete(key)
    lats, completed = [], 0
    for i in losers:
        if f"stop:{i}" in rec:
            lats.append(max(0.0, float(rec[f"stop:{i}"]) - win_at))
            completed += rec.get(f"how:{i}") == "completed"
    return lats, completed


# -- Ray ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def ray_session(processes: int) -> Iterator[Any]:
    import ray

    old = os.environ.get("PYTHONPATH")
    # Ray's worker processes inherit this: they import the task functions from bench.others.
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), old) if p)
    ray.init(
        num_cpus=processes,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=True,
    )
    try:
        yield ray
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def run_ray(
    processes: int, ns: list[int], trials: dict[int, int], race: Any, redis_url: str
) -> Figures:
    """Fan-out of N no-ops and a race (first of N, then ray.cancel the rest)."""
    figs = Figures()
    with ray_session(processes) as ray:
        remote_noop = ray.remote(noop)
        remote_racer = ray.remote(racer)
        ray.get([remote_noop.remote(i) for i in range(processes * 4)])  # warm the workers
        for n in ns:
            sample = figs.fanout.setdefault(n, Sample())
            for _ in range(trials[n]):
                started = time.perf_counter()
                ray.get([remote_noop.remote(i) for i in range(n)])
                sample.add(time.perf_counter() - started)
        r = redis.Redis.from_url(redis_url, decode_responses=True)
        try:
            for t in range(race.trials):
                winner = t % race.width
                trial = new_tag()
                started = time.perf_counter()
                refs = [
                    remote_racer.remote(redis_url, trial, i, race.work(i, winner), race.mode)
                    for i in range(race.width)
                ]
                done, rest = ray.wait(refs, num_returns=1)
                win_at = ray.get(done[0])
                figs.race_result.add(time.perf_counter() - started)
                for ref in rest:
                    ray.cancel(ref, force=False)  # KeyboardInterrupt inside the racer
                losers = [i for i in range(race.width) if refs[i] not in done]
                lats, completed = _race_stops(r, trial, losers, win_at, race.lose_s)
                for lat in lats:
                    figs.race_cancel.add(lat)
                figs.race_completed += completed
                with contextlib.suppress(Exception):
                    ray.wait(rest, num_returns=len(rest), timeout=race.lose_s + 5)
        finally:
            r.close()
    figs.note = f"ray {ray.__version__}, {processes} CPUs; cancel: ray.cancel(force=False)"
    return figs


# -- Dask --------------------------------------------------------------------------------------


def run_dask(
    processes: int, ns: list[int], trials: dict[int, int], race: Any, redis_url: str
) -> Figures:
    """Fan-out with client.map and a race (first completed, then cancel the rest)."""
    import dask
    from dask.distributed import Client, LocalCluster, wait

    figs = Figures()
    cluster = LocalCluster(  # type: ignore[no-untyped-call]
        n_workers=processes,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        silence_logs=50,
    )
    try:
        with Client(cluster) as client:  # type: ignore[no-untyped-call]
            client.gather(client.map(noop, range(processes * 4), pure=False))
            for n in ns:
                sample = figs.fanout.setdefault(n, Sample())
                for _ in range(trials[n]):
                    started = time.perf_counter()
                    client.gather(client.map(noop, range(n), pure=False))
                    sample.add(time.perf_counter() - started)
            r = redis.Redis.from_url(redis_url, decode_responses=True)
            try:
                for t in range(race.trials):
                    winner = t % race.width
                    trial = new_tag()
                    started = time.perf_counter()
                    futs = [
                        client.submit(
                            racer,
                            redis_url,
                            trial,
                            i,
                            race.work(i, winner),
                            race.mode,
                            pure=False,
                        )
                        for i in range(race.width)
                    ]
                    done = wait(futs, return_when="FIRST_COMPLETED").done  # type: ignore[no-untyped-call]
                    first = next(iter(done))
                    win_at = first.result()
                    figs.race_result.add(time.perf_counter() - started)
                    rest = [f for f in futs if f is not first]
                    client.cancel(rest)  # running tasks are not interrupted by Dask
                    losers = [i for i, f in enumerate(futs) if f is not first]
                    lats, completed = _race_stops(r, trial, losers, win_at, race.lose_s)
                    for lat in lats:
                        figs.race_cancel.add(lat)
                    figs.race_completed += completed
            finally:
                r.close()
    finally:
        cluster.close()
    figs.note = (
        f"dask {getattr(dask, '__version__', '?')}, {processes} worker processes; "
        "cancel: client.cancel (does not stop running tasks)"
    )
    return figs
