"""Agents and raw Celery tasks the benchmarks run, loaded by the workers through
``ORCH_AGENT_MODULES=workers.agents,bench.agents``.

The raw tasks are ``celery.shared_task``s: importing this module (which ``create_app`` does before
the worker's app is finalised) makes every app register them, so the very same worker processes
run our agents and the raw tasks. Raw tasks are what someone would write by hand: no envelope, no
run store, the result through Celery's backend only.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

import redis
from celery import shared_task
from pydantic import BaseModel, Field

from workers import AgentContext, agent, merger, validator

#: Prefix of the Redis hashes where raw racers record their own start and stop times.
RAW_RACE_PREFIX = "bench:rawrace"


class Nop(BaseModel):
    """Input and output of the no-op agent."""

    i: int = 0


class Count(BaseModel):
    """What the no-op merger returns."""

    n: int


class Race(BaseModel):
    """One racer: how long it works and how (cpu loop or blocking sleep)."""

    work_s: float = Field(ge=0, le=60)
    mode: str = Field(default="cpu", pattern="^(cpu|sleep)$")


class Raced(BaseModel):
    """What a racer returns."""

    pid: int
    work_s: float


def spin(seconds: float) -> None:
    """Busy CPU loop in pure Python (interruptible between bytecodes)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def work(seconds: float, mode: str) -> None:
    """A racer's work."""
    if mode == "sleep":
        time.sleep(seconds)
    else:
        spin(seconds)


@agent("bench_noop", input=Nop, output=Nop, description="No-op: returns its input.")
def bench_noop(x: Nop, ctx: AgentContext) -> Nop:
    return x


@merger("bench_count", input=Nop, output=Count, description="Counts its members.")
def bench_count(items: list[Nop], ctx: AgentContext) -> Count:
    return Count(n=len(items))


@agent("bench_racer", input=Race, output=Raced, description="Works work_s, never checks ctx.")
def bench_racer(r: Race, ctx: AgentContext) -> Raced:
    work(r.work_s, r.mode)
    return Raced(pid=os.getpid(), work_s=r.work_s)


@validator("bench_any", input=Raced, description="Accepts every racer's output.")
def bench_any(r: Raced) -> bool:
    return True


# -- raw Celery tasks (registered on every app, run by the same worker processes) ----------------

F = TypeVar("F", bound=Callable[..., Any])


def raw_task(name: str) -> Callable[[F], F]:
    """``celery.shared_task`` under a name (typed for the checker)."""
    return cast(Callable[[F], F], shared_task(name=name))


@raw_task("bench.raw_noop")
def raw_noop(i: int = 0) -> float:
    """No-op; returns when it ran (so the client can tell start latency without extra I/O)."""
    return time.time()


@raw_task("bench.raw_count")
def raw_count(results: list[Any]) -> int:
    """Trivial chord body."""
    return len(results)


_redis: redis.Redis | None = None
_redis_pid = -1


def _client() -> redis.Redis:
    global _redis, _redis_pid
    if _redis is None or _redis_pid != os.getpid():
        url = os.environ.get("ORCH_STATE_URL") or os.environ["ORCH_BROKER_URL"]
        _redis = redis.Redis.from_url(url, decode_responses=True)
        _redis_pid = os.getpid()
    return _redis


@raw_task("bench.raw_racer")
def raw_racer(trial: str, index: int, work_s: float, mode: str = "cpu") -> dict[str, Any]:
    """A hand-written racer: records its start and its stop (also on SIGTERM) in Redis.

    ``revoke(terminate=True)`` sends SIGTERM to the pool process; Celery resets that signal to
    its default in pool children, so the process would just die. The handler records the moment
    the signal arrived, then lets the default action kill the process exactly as it would have.
    """
    r = _client()
    key = f"{RAW_RACE_PREFIX}:{trial}"
    r.ping()  # connect now, not inside the signal handler
    previous = None
    on_main = _on_main_thread()

    def on_term(signum: int, frame: Any) -> None:
        r.hset(key, f"stop:{index}", repr(time.time()))
        r.hset(key, f"how:{index}", "sigterm")
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)

    if on_main:
        previous = signal.signal(signal.SIGTERM, on_term)
    started = time.time()
    r.hset(key, mapping={f"start:{index}": repr(started), f"pid:{index}": str(os.getpid())})
    try:
        work(work_s, mode)
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
        r.hsetnx(key, f"stop:{index}", repr(time.time()))
        r.hsetnx(key, f"how:{index}", "completed")
        r.expire(key, 3600)
    return {"index": index, "pid": os.getpid(), "finished_at": time.time()}


def _on_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
