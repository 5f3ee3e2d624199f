"""Load: over a hundred concurrent orchestrations of mixed patterns, 20-50 subagents each, on four
worker processes of a stack of its own (loopback only, bounded in count and time).

Every run must be accounted for (right status, every envelope once, each subtask started at most
once), the coordinator's and the server's memory must stay bounded (peaks are printed), and every
per-run key must carry a TTL.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import psutil
import pytest
import redis

from orchestrator import AgentStatus, EmbeddedStack, Orchestrator, Pattern, Run, RunStatus, Task
from tests.conftest import _stack, wait_for
from workers.models import AgentKind
from workers.names import Keys

pytestmark = [pytest.mark.integration, pytest.mark.load]

RUNS = 102  # 34 of each pattern
WORKERS, CONCURRENCY = 4, 1
DEADLINE_S = 120.0  # far above the expected wall time: a run that hits it is a failure
BUDGET_S = 75.0  # every run must have ended this long after the first submit
COORDINATOR_RSS_LIMIT = 500 * 2**20
REDIS_PEAK_LIMIT = 300 * 2**20
GOOD = 3  # valid racers per race: the claim, not the validator, must pick one winner


@pytest.fixture(scope="module")
def load_stack() -> Iterator[EmbeddedStack]:
    s = _stack(
        name="load",
        workers=WORKERS,
        concurrency=CONCURRENCY,
        key_prefix=f"load-{uuid.uuid4().hex[:8]}",
    )
    try:
        yield s
    finally:
        s.stop()


@dataclass
class Peaks:
    """Peak memory of processes, sampled in the background."""

    pids: dict[str, int]
    interval_s: float = 0.1
    rss: dict[str, int] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Peaks:
        procs = {name: psutil.Process(pid) for name, pid in self.pids.items()}

        def sample() -> None:
            while True:
                for name, proc in procs.items():
                    try:
                        rss = proc.memory_info().rss
                    except psutil.Error:
                        continue
                    self.rss[name] = max(self.rss.get(name, 0), rss)
                if self._stop.wait(self.interval_s):
                    return

        self._thread = threading.Thread(target=sample, name="peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


@dataclass
class Submitted:
    run: Run
    pattern: Pattern
    texts: list[str]
    good: set[int] = field(default_factory=set)


def _submit(orch: Orchestrator, i: int) -> Submitted:
    width = 20 + (i * 7) % 31  # 20..50
    pattern = (Pattern.SPAWN, Pattern.GATHER, Pattern.RACE)[i % 3]
    if pattern is Pattern.RACE:
        good = {(i + k * 7) % width for k in range(GOOD)}
        texts = [f"{'good' if k in good else 'bad'}-{i}-{k}" for k in range(width)]
        tasks = [Task("echo", {"text": t}) for t in texts]
        run = orch.race(tasks, validate="starts_good", deadline_s=DEADLINE_S, preflight="off")
        return Submitted(run, pattern, texts, good)
    texts = [f"r{i}-{k}" for k in range(width)]
    tasks = [Task("echo", {"text": t}) for t in texts]
    if pattern is Pattern.GATHER:
        run = orch.gather(tasks, merge="join", deadline_s=DEADLINE_S, preflight="off")
    else:
        run = orch.spawn(tasks, deadline_s=DEADLINE_S, preflight="off")
    return Submitted(run, pattern, texts)


def _hash_counts(r: redis.Redis, key: str) -> dict[int, int]:
    raw: dict[str, str] = r.hgetall(key)  # type: ignore[assignment]
    return {int(k): int(v) for k, v in raw.items()}


def _unacked_agent_messages(r: redis.Redis, keys: Keys) -> list[str]:
    """Subtask/merge messages delivered and not yet acknowledged (deadline timers excluded:
    the coordinator holds those until their ETA)."""
    raw: dict[str, str] = r.hgetall(keys.queue("unacked"))  # type: ignore[assignment]
    ids = [json.loads(v)[0]["headers"]["id"] for v in raw.values()]
    return [t for t in ids if not t.endswith((".deadline", ".coordinator"))]


def _quiet(orch: Orchestrator, runs: list[Submitted]) -> bool:
    """Nothing queued or in flight, and every subtask that started has reported."""
    r, keys = orch.store.r, orch.store.keys
    used = [orch.catalog.get(AgentKind.AGENT, "echo"), orch.catalog.get(AgentKind.MERGER, "join")]
    if any(r.llen(keys.queue(e.queue)) for e in used) or _unacked_agent_messages(r, keys):
        return False
    for s in runs:
        started = set(_hash_counts(r, keys.attempts(s.run.id)))
        reported = {int(i) for i in r.hkeys(keys.results(s.run.id))}
        if not started <= reported:
            return False
    return True


def _check_run(orch: Orchestrator, s: Submitted) -> None:
    """One run's outcome and its Redis state: every subtask accounted for, none twice."""
    res = s.run.wait(timeout_s=1)
    r, keys = orch.store.r, orch.store.keys
    n = len(s.texts)
    envelopes = orch.store.envelopes(s.run.id)
    attempts = _hash_counts(r, keys.attempts(s.run.id))
    done = int(orch.store.record(s.run.id)["done"])
    assert res.status is RunStatus.SUCCEEDED, f"{s.run.id}: {res.error}"
    assert [x.index for x in res.results] == list(range(n)), s.run.id
    # One envelope per subtask in Redis (never-started ones get a 'skipped' stand-in at the
    # end), and no subtask started twice.
    assert sorted(envelopes) == list(range(n)), f"{s.run.id}: {len(envelopes)} of {n} envelopes"
    assert all(a == 1 for a in attempts.values()), f"{s.run.id} ran a subtask twice: {attempts}"
    reported = [e for e in envelopes.values() if e.attempt >= 1]
    assert done == len(reported), f"{s.run.id}: done={done}, {len(reported)} reported"
    if s.pattern is not Pattern.RACE:
        assert done == n and sorted(attempts) == list(range(n)), f"{s.run.id}: {attempts}"
        assert all(x.status is AgentStatus.OK and x.attempt == 1 for x in res.results)
        if s.pattern is Pattern.SPAWN:
            assert [x.output["text"] for x in res.results] == s.texts
        else:
            assert res.merged == {"texts": s.texts}
        return
    assert res.winner is not None and res.winner.index in s.good, res.winner
    assert res.winner.output["text"] == s.texts[res.winner.index]
    assert r.get(keys.winner(s.run.id)) == str(res.winner.index)
    events: list[tuple[str, dict[str, str]]] = r.xrange(keys.events(s.run.id))  # type: ignore[assignment]
    wins = [f["index"] for _, f in events if f.get("type") == "finished" and f["won"] == "1"]
    assert wins == [str(res.winner.index)], f"{s.run.id}: winners {wins}"
    for i, env in envelopes.items():
        if env.attempt == 0:  # the stand-in of a subtask no worker ran (revoked or skipped)
            assert env.status is AgentStatus.SKIPPED and env.started_at is None, env
        elif i not in s.good:
            assert env.status in (AgentStatus.INVALID, AgentStatus.CANCELLED, AgentStatus.SKIPPED)
        if i != res.winner.index:
            assert res.results[i].status is not AgentStatus.OK or i in s.good, res.results[i]


def _keys_without_ttl(r: redis.Redis, prefix: str) -> tuple[list[str], list[str], int]:
    """Keys with no TTL under ``prefix`` and outside it, and how many keys are under it."""
    ours: list[str] = []
    others: list[str] = []
    total = 0
    for key in r.scan_iter(count=1000):
        name = str(key)
        mine = name.startswith(f"{prefix}:")
        total += mine
        if r.ttl(name) == -1:
            (ours if mine else others).append(name)
    return sorted(ours), sorted(others), total


def test_hundred_concurrent_orchestrations_all_accounted_for(load_stack: EmbeddedStack) -> None:
    orch = Orchestrator(broker_url=load_stack.url, key_prefix=load_stack.key_prefix)
    assert load_stack.redis is not None and load_stack.redis.proc is not None
    pids = {
        "coordinator": load_stack.procs["coordinator"].pid,
        "redis": load_stack.redis.proc.pid,
    }
    try:
        with Peaks(pids) as peaks:
            start = time.monotonic()
            runs = [_submit(orch, i) for i in range(RUNS)]
            submitted_s = time.monotonic() - start
            for s in runs:
                remaining = BUDGET_S - (time.monotonic() - start)
                s.run.wait(timeout_s=max(remaining, 0.1))
            wall_s = time.monotonic() - start
            wait_for(lambda: _quiet(orch, runs), 30, "the queues to drain after the last run")
        for s in runs:
            _check_run(orch, s)

        subtasks = sum(len(s.texts) for s in runs)
        info = orch.store.r.info("memory")
        redis_peak = int(info["used_memory_peak"])
        no_ttl, other_no_ttl, total_keys = _keys_without_ttl(orch.store.r, load_stack.key_prefix)
        print(
            f"\nload: {RUNS} runs, {subtasks} subtasks on {WORKERS}x{CONCURRENCY} workers; "
            f"submitted in {submitted_s:.2f}s, all ended in {wall_s:.2f}s "
            f"({subtasks / wall_s:.0f} subtasks/s)\n"
            f"peak RSS: coordinator {peaks.rss['coordinator'] / 2**20:.1f} MiB, "
            f"valkey-server {peaks.rss['redis'] / 2**20:.1f} MiB; "
            f"Redis used_memory_peak {redis_peak / 2**20:.1f} MiB; "
            f"{total_keys} keys under {load_stack.key_prefix}:*"
        )
        assert peaks.rss["coordinator"] < COORDINATOR_RSS_LIMIT
        assert redis_peak < REDIS_PEAK_LIMIT
        k = orch.store.keys
        # Every key is under the prefix: kombu's and Celery's too (ORCH_KEY_PREFIX keeps two
        # deployments apart on one server).
        assert other_no_ttl == [], other_no_ttl
        # Celery's results and chord counters expire too; what stays is kombu's fixed
        # bookkeeping (queues, bindings, the unacked index), which does not grow per run.
        settings = orch.settings
        fixed = {
            k.queue(name) for name in (settings.agent_queue, settings.coordinator_queue, "unacked")
        } | {k.queue("unacked_index")}
        ours = [x for x in no_ttl if x not in fixed and not x.startswith(k.queue("_kombu."))]
        assert ours == sorted([k.catalog, k.served, k.workers, k.runs]), ours
    finally:
        orch.close()
