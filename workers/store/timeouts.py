"""How long a reply from Redis may take: a client call's own limit, and room for blocking reads.

redis-py has one socket timeout per connection. A client needs two more things: a call made
under a caller's limit (``Run.wait(timeout_s=2)``) must not wait longer for any reply than that
limit, however many round trips it makes; and a blocking ``XREAD BLOCK`` must be given its block
time on top of the socket timeout, or every long block would look like a frozen server. The
connections built here read both from context variables (per thread and per asyncio task), so
the store's methods and the waiters say it once, around their calls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import redis
from redis.connection import SSLConnection, UnixDomainSocketConnection
from redis.utils import SENTINEL

#: When (time.monotonic) every reply must have arrived by, if a caller set a limit.
_REPLY_BY: ContextVar[float | None] = ContextVar("orch_reply_by", default=None)
#: Seconds a blocking command in flight may hold its reply, on top of the socket timeout.
_BLOCK_S: ContextVar[float] = ContextVar("orch_block_s", default=0.0)


@contextlib.contextmanager
def replies_within(seconds: float | None) -> Iterator[None]:
    """Every reply read in this block must arrive within ``seconds`` from now (None: no limit
    beyond the socket timeout). Nested limits keep the earliest."""
    if seconds is None:
        yield
        return
    by = time.monotonic() + max(seconds, 0.0)
    outer = _REPLY_BY.get()
    token = _REPLY_BY.set(by if outer is None else min(outer, by))
    try:
        yield
    finally:
        _REPLY_BY.reset(token)


@contextlib.contextmanager
def blocking_for(seconds: float) -> Iterator[None]:
    """A blocking command in this block holds its reply up to ``seconds`` by design."""
    token = _BLOCK_S.set(max(seconds, 0.0))
    try:
        yield
    finally:
        _BLOCK_S.reset(token)


def left_s(default_s: float) -> float:
    """``default_s``, or less when a caller's limit ends sooner (asyncio commands use it)."""
    by = _REPLY_BY.get()
    if by is None:
        return default_s
    return min(default_s, max(by - time.monotonic(), 0.001))


def _read_timeout(socket_timeout: float | None) -> Any:
    """The timeout of the next reply, or SENTINEL for the connection's own socket timeout."""
    block_s, by = _BLOCK_S.get(), _REPLY_BY.get()
    if not block_s and by is None:
        return SENTINEL
    timeout = None if socket_timeout is None else socket_timeout + block_s
    if by is not None:
        left = max(by - time.monotonic(), 0.001)
        timeout = left if timeout is None else min(timeout, left)
    return timeout


class _Bounded:
    """Reads replies within the limits above (mixed into redis-py's connection classes)."""

    socket_timeout: float | None

    def read_response(self, *args: Any, timeout: Any = SENTINEL, **kwargs: Any) -> Any:
        if timeout is SENTINEL:
            timeout = _read_timeout(self.socket_timeout)
        return super().read_response(*args, timeout=timeout, **kwargs)  # type: ignore[misc]


class BoundedConnection(_Bounded, redis.Connection):
    """TCP."""


class BoundedSSLConnection(_Bounded, SSLConnection):
    """TLS (rediss://)."""


class BoundedUnixConnection(_Bounded, UnixDomainSocketConnection):
    """Unix socket (unix://)."""


def connection_class(url: str) -> type[redis.Connection] | type[UnixDomainSocketConnection]:
    """The bounded connection class for a URL's scheme."""
    scheme = url.split("://", 1)[0].lower()
    if scheme == "rediss":
        return BoundedSSLConnection
    if scheme == "unix":
        return BoundedUnixConnection
    return BoundedConnection
