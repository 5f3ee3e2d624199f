"""The fleet benchmark's environment (bench/fleet.py): one embedded server with a coordinator,
the loopback model server as a process of its own (its CPU and memory are not the worker's),
memory sampling, the streams' URLs, and the rows the measurements fill in."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil  # type: ignore[import-untyped]  # no stubs in the venv

from bench.common import ROOT, BenchError, RawCelery, Sample, _BenchStack, new_tag
from orchestrator import Orchestrator, Settings

FLEET_MODULES = ["workers.agents", "bench.fleet_agents"]
#: A racer that wins: 2 events 10 ms apart; one that loses: 50 events 100 ms apart (4.9 s).
WIN_STREAM = (2, 10.0)
LOSE_STREAM = (50, 100.0)
RACE_WIDTH = 4
RSS_EVERY_S = 0.05
MIB = 1024 * 1024


def stream_url(base: str, stream_id: str, chunks: int, interval_ms: float) -> str:
    return f"{base}/stream?id={stream_id}&chunks={chunks}&interval_ms={interval_ms:g}"


def race_urls(base: str, tag: str) -> list[str]:
    """Racer 0 streams 2 events fast, the others 50 slowly; each its own stream id."""
    return [
        stream_url(base, f"{tag}-{i}", *(WIN_STREAM if i == 0 else LOSE_STREAM))
        for i in range(RACE_WIDTH)
    ]


# -- the model server process ---------------------------------------------------------------------


@dataclass
class ModelProcess:
    """``python -m tests.model_server`` in a process group of its own."""

    proc: subprocess.Popen[str]
    url: str

    def records(self, prefix: str) -> list[dict[str, Any]]:
        """The server's records of streams whose id starts with ``prefix``."""
        with urllib.request.urlopen(f"{self.url}/_records?prefix={prefix}", timeout=30) as resp:
            rows: list[dict[str, Any]] = json.load(resp)
        return rows

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def start_model_server(log: Path, timeout_s: float = 20.0) -> ModelProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.model_server", "--port", "0"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout_s)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("listening "):
        ModelProcess(proc, "").stop()
        raise BenchError(f"the model server did not start ({line!r}); see {log}")
    return ModelProcess(proc, line.split()[1])


# -- memory ---------------------------------------------------------------------------------------


class RssSampler:
    """Peak resident memory of a process and its children, sampled every 50 ms meanwhile, and
    the CPU seconds they used."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.idle_bytes = 0
        self.peak_bytes = 0
        self.cpu_s = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)

    def _procs(self) -> list[Any]:
        try:
            main = psutil.Process(self.pid)
            return [main, *main.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def total(self) -> int:
        rss = 0
        for p in self._procs():
            with contextlib.suppress(psutil.NoSuchProcess):
                rss += p.memory_info().rss
        return rss

    def cpu(self) -> float:
        used = 0.0
        for p in self._procs():
            with contextlib.suppress(psutil.NoSuchProcess):
                t = p.cpu_times()
                used += t.user + t.system
        return used

    def _run(self) -> None:
        while not self._stop.wait(RSS_EVERY_S):
            self.peak_bytes = max(self.peak_bytes, self.total())

    def __enter__(self) -> RssSampler:
        self.idle_bytes = self.peak_bytes = self.total()
        self.cpu_s = -self.cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self.total())
        self.cpu_s += self.cpu()


# -- the environment ------------------------------------------------------------------------------


@dataclass
class FleetEnv:
    """The server, coordinator, model server and clients every measurement shares."""

    stack: _BenchStack
    settings: Settings
    raw: RawCelery
    orch: Orchestrator
    model: ModelProcess
    log_dir: Path


@contextlib.contextmanager
def fleet_env(
    log_dir: Path, http_clients: int = 1, broker_max_connections: int = 0
) -> Iterator[FleetEnv]:
    """Start everything; stop every process it started on the way out, however it goes."""
    tag = new_tag()[:8]
    prefix = f"orchfleet-{tag}"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "ORCH_AGENT_QUEUE": f"{prefix}-agents",
        "ORCH_COORDINATOR_QUEUE": f"{prefix}-orchestrator",
        "ORCH_RUN_TTL_S": "3600",
        # Our worker process holds every stream of the spawn at once (the default is 500).
        "ORCH_AIO__MAX_IN_FLIGHT": "2000",
        # Read in the workers by bench/fleet_agents.py and bench/fleet_worker.py (raw only).
        "FLEET_HTTP_CLIENTS": str(http_clients),
        "FLEET_HTTP": os.environ.get("FLEET_HTTP", "httpx"),
        "FLEET_BROKER_MAX_CONNECTIONS": str(broker_max_connections),
    }
    model = start_model_server(log_dir / "model-server.log")
    stack = _BenchStack(
        workers=0,
        concurrency=1,
        agent_modules=FLEET_MODULES,
        key_prefix=prefix,
        extra_env=env,
        log_dir=log_dir,
    )
    try:
        stack.start(timeout_s=90)
        settings = Settings(
            broker_url=stack.url,
            key_prefix=prefix,
            agent_queue=env["ORCH_AGENT_QUEUE"],
            coordinator_queue=env["ORCH_COORDINATOR_QUEUE"],
            run_ttl_s=3600,
        )
        raw, orch = RawCelery(settings), Orchestrator(settings)
        try:
            yield FleetEnv(stack, settings, raw, orch, model, log_dir)
        finally:
            orch.close()
            raw.close()
    finally:
        stack.stop()  # raw workers too: they are registered in stack.procs
        model.stop()


# -- measurements ---------------------------------------------------------------------------------


@dataclass
class FleetRow:
    """One fleet of n streams through one mechanism."""

    mechanism: str
    pool: str
    n: int
    wall_s: float = float("nan")
    idle_rss_bytes: int = 0
    peak_rss_bytes: int = 0
    ok: int = 0
    server_peak: int = 0  # streams the model server had open at once
    cpu_s: float = float("nan")  # CPU the worker process (and children) used meanwhile
    note: str = ""


@dataclass
class RaceRow:
    """Races of one mechanism: each loser's disconnect (or completion) after the win."""

    mechanism: str
    races: int = 0
    losers: int = 0
    disconnected: int = 0
    completed: int = 0
    never_started: int = 0
    win_to_disconnect: Sample = field(default_factory=Sample)
    win_to_end: Sample = field(default_factory=Sample)
    note: str = ""

    def add_losers(
        self, records: list[dict[str, Any]], loser_ids: list[str], win_at: float
    ) -> None:
        by_id = {r["id"]: r for r in records}
        for sid in loser_ids:
            self.losers += 1
            rec = by_id.get(sid)
            if rec is None:
                self.never_started += 1
                continue
            self.win_to_end.add(rec["ended_at"] - win_at)
            if rec["disconnected_at"] is not None:
                self.disconnected += 1
                self.win_to_disconnect.add(rec["disconnected_at"] - win_at)
            self.completed += bool(rec["completed"])


def server_peak(records: list[dict[str, Any]]) -> int:
    """The most streams of ``records`` open at one moment."""
    edges = sorted(
        [(r["started_at"], 1) for r in records]
        + [(r["ended_at"] or float("inf"), -1) for r in records],
        key=lambda e: (e[0], e[1]),  # an end before a start at the same instant
    )
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def losers_ended(
    env: FleetEnv, tag: str, loser_ids: list[str], timeout_s: float
) -> list[dict[str, Any]]:
    """The model server's records of a race once every loser's stream has ended (or, for a
    loser that never started, once the deadline passed)."""
    deadline = time.monotonic() + timeout_s
    while True:
        records = env.model.records(f"{tag}-")
        ended = {r["id"] for r in records if r["ended_at"] is not None}
        if set(loser_ids) <= ended or time.monotonic() > deadline:
            return records
        time.sleep(0.02)
