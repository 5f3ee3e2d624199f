"""What every benchmark shares: targets (a stack of real processes on one Redis), raw Celery
helpers that wait at Celery's best, statistics and table formatting."""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import signal
import statistics
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery, group
from celery._state import _set_task_join_will_block
from celery.canvas import Signature

from orchestrator import EmbeddedStack, Orchestrator, Settings
from workers.app import create_app
from workers.names import Keys
from workers.store import redis_client

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
AGENT_MODULES = ["workers.agents", "bench.agents"]
#: Environment variable naming a Redis to benchmark against besides the embedded server.
REDIS_URL_ENV = "ORCH_BENCH_REDIS_URL"


class BenchError(RuntimeError):
    """A benchmark could not measure what it set out to (with what to do about it)."""


# -- statistics ----------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Nearest-rank quantile (q in 0..1) of a non-empty sample."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class Sample:
    """Repeated measurements of one figure."""

    values: list[float] = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def median(self) -> float:
        return statistics.median(self.values) if self.values else math.nan

    @property
    def p90(self) -> float:
        return quantile(self.values, 0.9)

    @property
    def p99(self) -> float:
        return quantile(self.values, 0.99)

    def __len__(self) -> int:
        return len(self.values)


def ms(seconds: float) -> str:
    """Seconds as a short millisecond figure."""
    if math.isnan(seconds):
        return "n/a"
    if seconds >= 10:
        return f"{seconds * 1000:.0f}"
    return f"{seconds * 1000:.1f}" if seconds >= 0.01 else f"{seconds * 1000:.2f}"


def ratio(ours: float, theirs: float) -> str:
    """ours / theirs, or n/a."""
    if math.isnan(ours) or math.isnan(theirs) or theirs <= 0:
        return "n/a"
    return f"{ours / theirs:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (also readable as plain text)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(cells)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def wait_until(
    cond: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.005
) -> Any:
    """Poll ``cond`` until truthy; BenchError naming ``what`` when the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


# -- raw Celery at its best -----------------------------------------------------------------------


class RawCelery:
    """Raw Celery canvases sent to the same workers, waited for without Celery's 0.5 s poll.

    Results are awaited on the result backend's own pub/sub channel (the Redis backend publishes
    every stored result on ``celery-task-meta-<id>``): one PSUBSCRIBE per canvas, made before it
    is sent, so no result can be missed and nothing is polled.
    """

    def __init__(self, settings: Settings) -> None:
        # Celery's client subscribes to every task it sends (one SUBSCRIBE each) so that
        # AsyncResult.get() works; we wait on one pattern instead, so turn that off.
        _set_task_join_will_block(True)
        self.settings = settings
        self.app: Celery = create_app(settings, load_agents=False)
        self.queue = settings.agent_queue
        self.r = redis_client(settings.celery_backend())

    def close(self) -> None:
        quiet_results(self.app)
        self.app.close()
        self.r.close()

    def sig(self, name: str, *args: Any, task_id: str | None = None) -> Signature:
        """A signature of a raw task on the agents' queue."""
        return self.app.signature(name, args=args, queue=self.queue, task_id=task_id)

    @contextlib.contextmanager
    def results(self, tag: str) -> Iterator[ResultStream]:
        """Subscribe to every result whose task id starts with ``tag-``."""
        ps = self.r.pubsub(ignore_subscribe_messages=False)  # type: ignore[no-untyped-call]
        # Celery's result keys (and their channels) carry our prefix (kombu_prefix).
        prefix = Keys(self.settings.key_prefix).kombu_prefix
        ps.psubscribe(f"{prefix}celery-task-meta-{tag}-*")
        confirmed = wait_until(
            lambda: ps.get_message(timeout=0.5), 5.0, "the result backend's psubscribe reply"
        )
        assert confirmed["type"] == "psubscribe"
        try:
            yield ResultStream(ps)
        finally:
            with contextlib.suppress(Exception):
                ps.punsubscribe()
            ps.close()


def quiet_results(app: Celery) -> None:
    """Stop result objects from talking to a server that is going away.

    Celery's results unsubscribe from their channel when collected; one collected after the
    server stopped retries for about 20 s at exit. Collect what can be collected now, and make
    the rest forget quietly.
    """
    gc.collect()
    backend = app.backend
    if hasattr(backend, "remove_pending_result"):
        backend.remove_pending_result = lambda result: result


class ResultStream:
    """Final task states as the backend publishes them."""

    FINAL = {"SUCCESS", "FAILURE", "REVOKED"}

    def __init__(self, ps: Any) -> None:
        self.ps = ps

    def next(self, deadline: float) -> dict[str, Any]:
        """The next final result (task_id, status, result), or BenchError at the deadline."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BenchError("raw Celery result did not arrive in time")
            msg = self.ps.get_message(timeout=min(remaining, 1.0))
            if not msg or msg.get("type") != "pmessage":
                continue
            meta: dict[str, Any] = json.loads(msg["data"])
            if meta.get("status") in self.FINAL:
                return meta

    def collect(self, ids: set[str], timeout_s: float) -> dict[str, dict[str, Any]]:
        """Every final result of ``ids``."""
        deadline = time.monotonic() + timeout_s
        got: dict[str, dict[str, Any]] = {}
        while len(got) < len(ids):
            meta = self.next(deadline)
            if meta["task_id"] in ids:
                got[meta["task_id"]] = meta
        return got


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


# -- targets ------------------------------------------------------------------------------------


@dataclass
class Target:
    """One Redis (embedded or configured) with its coordinator and worker processes."""

    name: str
    stack: EmbeddedStack
    settings: Settings
    orch: Orchestrator
    raw: RawCelery
    redis: redis.Redis
    shared: bool  # a configured server others may use: commandstats are noisy there

    @property
    def workers(self) -> list[str]:
        return sorted(n for n in self.stack.procs if n != "coordinator")

    def set_workers(
        self, count: int, *, concurrency: int, pool: str = "prefork", timeout_s: float = 90.0
    ) -> None:
        """Replace the worker processes by ``count`` new ones (names never reused)."""
        old = self.workers
        for name in old:  # warm shutdown of all at once, then wait for each
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.stack.procs[name].pid, signal.SIGTERM)
        for name in old:
            self.stack.stop_process(name, 10.0)
        base = f"w{new_tag()[:4]}"
        names = [f"{base}x{i}" for i in range(1, count + 1)]
        for name in names:
            self.stack.start_worker(name, pool=pool, concurrency=concurrency)
        self.stack.wait_ready(names, timeout_s)
        warm_up(self, count * concurrency)

    def commandstats(self) -> dict[str, int]:
        """Calls per command since the server started."""
        info: dict[str, Any] = self.redis.info("commandstats")
        return {
            k.removeprefix("cmdstat_"): int(v["calls"])
            for k, v in info.items()
            if isinstance(v, dict)
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            quiet_results(self.orch.app)
            self.orch.close()
        with contextlib.suppress(Exception):
            self.raw.close()
        try:
            if self.shared:
                # Every key, kombu's and Celery's included, is under the prefix.
                _delete_prefix(self.redis, self.settings.key_prefix)
        except Exception as exc:
            print(f"  (could not clean up keys on {self.name}: {exc})")
        finally:
            self.stack.stop()
            self.redis.close()


def _delete_prefix(r: redis.Redis, prefix: str) -> None:
    batch: list[str] = []
    for key in r.scan_iter(match=f"{prefix}:*", count=500):
        batch.append(key)
        if len(batch) >= 500:
            r.delete(*batch)
            batch.clear()
    if batch:
        r.delete(*batch)


class _BenchStack(EmbeddedStack):
    """A stack whose processes see only the settings given here, not the caller's ORCH_*."""

    _OWN = ("ORCH_BROKER_URL", "ORCH_KEY_PREFIX", "ORCH_AGENT_MODULES")

    def env(self) -> dict[str, str]:
        full = super().env()
        for k in list(full):
            if k.startswith("ORCH_") and k not in self.extra_env and k not in self._OWN:
                del full[k]
        return full


def start_target(
    name: str,
    *,
    url: str | None,
    workers: int,
    concurrency: int,
    pool: str = "prefork",
    log_dir: Path | None = None,
) -> Target:
    """Start a coordinator and workers (and the embedded server when ``url`` is None).

    Queues and keys get a unique prefix so a configured Redis shared with others is not
    disturbed; every process is stopped by ``Target.close()``.
    """
    tag = new_tag()[:8]
    prefix = f"orchbench-{tag}"
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "ORCH_AGENT_QUEUE": f"{prefix}-agents",
        "ORCH_COORDINATOR_QUEUE": f"{prefix}-orchestrator",
        "ORCH_RUN_TTL_S": "3600",
    }
    stack = _BenchStack(
        workers=0,
        concurrency=concurrency,
        pool=pool,
        agent_modules=AGENT_MODULES,
        broker_url=url,
        key_prefix=prefix,
        extra_env=env,
        log_dir=log_dir or RESULTS / "logs" / f"{name}-{tag}",
    )
    stack.start(timeout_s=90)
    try:
        settings = Settings(
            broker_url=stack.url,
            key_prefix=prefix,
            agent_queue=env["ORCH_AGENT_QUEUE"],
            coordinator_queue=env["ORCH_COORDINATOR_QUEUE"],
            run_ttl_s=3600,
        )
        target = Target(
            name=name,
            stack=stack,
            settings=settings,
            orch=Orchestrator(settings),
            raw=RawCelery(settings),
            redis=redis_client(stack.url),
            shared=url is not None,
        )
        target.set_workers(workers, concurrency=concurrency, pool=pool)
    except BaseException:
        stack.stop()
        raise
    return target


def warm_up(target: Target, width: int) -> None:
    """Run a few raw no-ops and one no-op spawn so every pool process has imported and connected."""
    from orchestrator import Task

    raw = target.raw
    for _ in range(2):
        tag = new_tag()
        ids = [f"{tag}-{i}" for i in range(max(2, width * 2))]
        with raw.results(tag) as stream:
            group(
                [raw.sig("bench.raw_noop", i, task_id=t) for i, t in enumerate(ids)]
            ).apply_async()
            stream.collect(set(ids), 60)
    tasks = [Task("bench_noop", {"i": i}) for i in range(max(2, width * 2))]
    run = target.orch.spawn(tasks, preflight="off", deadline_s=50)
    run.wait(timeout_s=60)


@contextlib.contextmanager
def interrupt_as_exit() -> Iterator[None]:
    """Let SIGTERM (and SIGINT, even if inherited ignored) stop a benchmark like Ctrl-C does,
    so every process it started is cleaned up."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
