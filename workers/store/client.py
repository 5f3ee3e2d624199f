"""Building the store: a Redis client with sane timeouts and retries, under the settings' names."""

from __future__ import annotations

import socket

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from workers.names import Keys
from workers.settings import Settings
from workers.store.run_store import RunStore
from workers.store.timeouts import connection_class

#: Retries of a worker's or coordinator's client: ride out a Redis restart of about 20 s.
RETRIES = 25


def redis_client(
    url: str, retries: int = RETRIES, *, timeout_s: float | None = None
) -> redis.Redis:
    """A decoded Redis client with sane timeouts (fork-safe: redis-py resets pools by pid).

    ``timeout_s``: the longest wait for a reply (a client's). A server that does not answer
    then (frozen, or cut off) is reported at once, not retried; a refused or reset connection
    (a restart) is still retried. None: no limit (workers and coordinators wait servers out).
    Blocking reads get their block time on top (workers/store/timeouts.py).
    """
    # Scripts reload by themselves after a restart (workers/scripts.py falls back from
    # EVALSHA to SCRIPT LOAD).
    retry_on: tuple[type[Exception], ...] = (redis.ConnectionError,)
    if timeout_s is None:
        retry_on += (redis.TimeoutError, socket.timeout)
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        socket_connect_timeout=5 if timeout_s is None else min(5.0, timeout_s),
        socket_timeout=timeout_s,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries, supported_errors=retry_on),
        retry_on_error=list(retry_on),
        connection_class=connection_class(url),
    )


def make_store(
    settings: Settings,
    client: redis.Redis | None = None,
    *,
    retries: int | None = None,
    timeout_s: float | None = None,
) -> RunStore:
    """The run store for these settings (clients pass few retries and their timeout: they
    report, not wait; workers and coordinators take ``ORCH_STATE_RETRIES``)."""
    tries = settings.state_retries if retries is None else retries
    return RunStore(
        client or redis_client(settings.redis_url(), tries, timeout_s=timeout_s),
        Keys(settings.key_prefix),
        ttl_s=settings.run_ttl_s,
        events_maxlen=settings.events_maxlen,
        recent=settings.recent_runs,
        stats_samples=settings.advisor.stats_samples,
        stats_ttl_s=settings.advisor.stats_ttl_s,
    )


def store_at(url: str, prefix: str, *, retries: int = 0) -> RunStore:
    """A store on a URL with default limits, for tools that read (the embedded stack, CLI)."""
    return RunStore(
        redis_client(url, retries), Keys(prefix), ttl_s=86_400, events_maxlen=10_000, recent=200
    )


def answers(url: str, timeout_s: float = 1.0) -> bool:
    """Whether a Redis-compatible server answers PING at ``url`` right now."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError):
        return False
    finally:
        client.close()
