"""One blocked ``XREAD`` per event loop for every run it awaits (the engine of asyncio waiting).

Per event loop and state Redis, one :class:`Multiplexer` keeps **one** ``XREAD BLOCK`` in
flight over the ``done`` stream of every awaited run and the ``events`` stream of every followed
run, and hands each entry to the coroutines waiting for it: a waiting run costs a queue, not a
thread or a connection (one reader connection plus a small bounded pool for short commands).

When a coroutine starts waiting on a stream that the read in flight does not cover (or covers
from a later entry), the multiplexer appends to a private one-entry "wake" stream that the same
read does cover, so the read returns at once and is reissued (no polling, no reconnect).
Connections close when the multiplexer has been idle for ``IDLE_S``, when its loop shuts down
(``asyncio.run`` cancels its task), or by :func:`close_async`.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from workers.errors import BrokerUnavailable
from workers.names import Keys
from workers.scripts import Script
from workers.settings import safe_url
from workers.store.records import stream_entries
from workers.store.script_batch import ScriptBatcher
from workers.store.timeouts import left_s

#: Longest single XREAD BLOCK: how long a silently dead connection can go unnoticed.
BLOCK_MS = 5_000
#: A multiplexer nobody used for this long closes its connections (reopened on demand).
IDLE_S = 30.0
#: Connections for short commands (GET result, HGET record), shared by every waiter.
COMMAND_CONNECTIONS = 8
#: Entries read per stream per XREAD.
BATCH = 500
#: After a failed read, how long the reader waits before it reads again (the server is away).
RECONNECT_S = 0.5
#: A command (or a BLOCK beyond its end) unanswered this long means the connection is dead.
#: The clients get socket_timeout=None and this asyncio.timeout instead: with a socket timeout,
#: redis-py sends through asyncio.wait_for, and Python 3.11's wait_for can swallow a cancel
#: that arrives as the send completes (the loop's shutdown then waits out a whole BLOCK).
COMMAND_TIMEOUT_S = 10.0

Entry = tuple[str, dict[str, Any]]
#: The errors of a connection that is gone (or a server that is away).
CONNECTION_ERRORS = (redis.ConnectionError, redis.TimeoutError)
ERRORS = (*CONNECTION_ERRORS, OSError)


def _sid(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One coroutine's interest in one stream, from ``cursor`` on (exclusive)."""

    __slots__ = ("cursor", "key", "queue")

    def __init__(self, key: str, cursor: str) -> None:
        self.key = key
        self.cursor = cursor
        self.queue: asyncio.Queue[list[Entry] | BaseException] = asyncio.Queue()


class Multiplexer:
    """One blocked XREAD for every stream this event loop waits on (see the module docstring)."""

    def __init__(self, url: str, keys: Keys) -> None:
        self.url = url
        self.keys = keys
        self.reads = 0  # XREAD calls issued: lets tests see the many waiters share one read
        self._subs: dict[str, set[Subscription]] = {}
        self._reading: dict[str, tuple[int, int]] = {}  # stream -> cursor of the read in flight
        self._wake_pending = False
        self._wake_key = keys.waker(uuid.uuid4().hex[:16])
        self._wake_cursor = "0-0"
        self._changed = asyncio.Event()
        self._busy = 0
        self._task: asyncio.Task[None] | None = None
        self._cmd: aioredis.Redis | None = None
        self._scripts: ScriptBatcher | None = None
        self._reader: aioredis.Redis | None = None

    # -- short commands --------------------------------------------------------------------
    def _command_client(self) -> aioredis.Redis:
        self._ensure_task()
        if self._cmd is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                self.url,
                max_connections=COMMAND_CONNECTIONS,
                timeout=30,
                decode_responses=True,
                socket_connect_timeout=5,
                socket_timeout=None,  # see COMMAND_TIMEOUT_S
                client_name="orch-aio",
            )
            self._cmd = aioredis.Redis.from_pool(pool)
        return self._cmd

    async def _command(self, call: Callable[[aioredis.Redis], Any]) -> Any:
        self._busy += 1
        try:
            # A caller's limit (a wait's timeout_s) bounds every command it makes.
            async with asyncio.timeout(left_s(COMMAND_TIMEOUT_S)):
                return await call(self._command_client())
        except ERRORS as exc:
            raise unavailable(self.url, exc) from exc
        finally:
            self._busy -= 1
            self._changed.set()

    async def get(self, key: str) -> str | None:
        """GET a string key."""
        return await self._command(lambda r: r.get(key))  # type: ignore[no-any-return]

    async def script(self, script: Script, keys: list[str], args: Sequence[Any] = ()) -> Any:
        """Run a Lua script of the registry (EVALSHA, loading it on first use); the calls of
        one loop turn go in one pipeline (``workers/store/script_batch.py``)."""
        if self._scripts is None:
            self._scripts = ScriptBatcher(self._command)
        return await self._scripts.call(script, keys, args)

    async def append(self, key: str, fields: dict[str, str], maxlen: int, ttl_s: int) -> None:
        """XADD one entry (capped) and keep the stream's TTL, one round trip."""

        async def call(r: aioredis.Redis) -> Any:
            pipe = r.pipeline(transaction=False)
            pipe.xadd(key, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
            pipe.expire(key, ttl_s)
            return await pipe.execute()

        await self._command(call)

    async def hmget(self, key: str, fields: list[str]) -> list[str | None]:
        """HMGET some fields of a hash."""
        return await self._command(lambda r: r.hmget(key, fields))  # type: ignore[no-any-return]

    async def hget(self, key: str, field: str) -> str | None:
        """HGET one field of a hash."""
        return await self._command(lambda r: r.hget(key, field))  # type: ignore[no-any-return]

    async def xrange_after(self, key: str, cursor: str) -> list[Entry]:
        """Stream entries after ``cursor`` (exclusive), no waiting."""
        low = "-" if cursor == "0-0" else f"({cursor}"
        raw = await self._command(lambda r: r.xrange(key, min=low))
        return [(str(i), dict(f)) for i, f in raw]

    # -- subscriptions ---------------------------------------------------------------------
    async def subscribe(self, key: str, cursor: str = "0-0") -> Subscription:
        """Start receiving entries of ``key`` after ``cursor``; pair with :meth:`unsubscribe`."""
        sub = Subscription(key, cursor)
        self._subs.setdefault(key, set()).add(sub)
        self._ensure_task()
        self._changed.set()
        in_flight = self._reading.get(key)
        stale = in_flight is None or _sid(cursor) < in_flight
        if self._reading and stale and not self._wake_pending:
            # The read in flight does not cover this stream from this cursor: make it return.
            self._wake_pending = True
            try:
                await self._command(self._wake)
            except BaseException:
                self.unsubscribe(sub)
                raise
        return sub

    async def _wake(self, r: aioredis.Redis) -> None:
        pipe = r.pipeline(transaction=False)
        pipe.xadd(self._wake_key, {"w": "1"}, maxlen=1, approximate=False)
        pipe.expire(self._wake_key, int(IDLE_S * 4))
        await pipe.execute()

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop receiving; safe to call twice."""
        subs = self._subs.get(sub.key)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.key]
        self._changed.set()

    async def next_entries(self, sub: Subscription, timeout_s: float) -> list[Entry] | None:
        """The next entries of the subscription, or None when ``timeout_s`` passes first."""
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                item = await sub.queue.get()
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise unavailable(self.url, item) from item
        return item

    @property
    def waiting(self) -> int:
        """How many subscriptions are open."""
        return sum(len(s) for s in self._subs.values())

    # -- the reader task -------------------------------------------------------------------
    def _ensure_task(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"orchestrator-aio-reader:{self.keys.prefix}"
            )

    async def _run(self) -> None:
        try:
            while True:
                if not self._subs:
                    self._changed.clear()
                    try:
                        # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel.
                        async with asyncio.timeout(IDLE_S):
                            await self._changed.wait()
                    except TimeoutError:
                        if not self._subs and not self._busy:
                            return
                    continue
                await self._read_once()
        finally:
            # Detach first (synchronously), so a newcomer starts fresh clients and a new task.
            cmd, reader = self._cmd, self._reader
            self._cmd = self._reader = None
            if self._task is asyncio.current_task():
                self._task = None
            self._reading = {}
            for client in (reader, cmd):
                if client is not None:
                    await client.aclose()

    async def _read_once(self) -> None:
        if self._reader is None:
            self._reader = aioredis.Redis.from_url(
                self.url,
                decode_responses=True,
                socket_connect_timeout=5,
                socket_timeout=None,  # see COMMAND_TIMEOUT_S
                client_name="orch-aio-reader",
            )
        streams: dict[Any, Any] = {
            key: min((s.cursor for s in subs), key=_sid) for key, subs in self._subs.items()
        }
        streams[self._wake_key] = self._wake_cursor
        self._reading = {key: _sid(cursor) for key, cursor in streams.items()}
        self._wake_pending = False
        try:
            async with asyncio.timeout(BLOCK_MS / 1000 + COMMAND_TIMEOUT_S):
                reply = await self._reader.xread(streams, count=BATCH, block=BLOCK_MS)
        except ERRORS as exc:
            self._reading = {}
            for subs in self._subs.values():
                for sub in subs:
                    if sub.queue.empty():
                        sub.queue.put_nowait(exc)
            await asyncio.sleep(RECONNECT_S)  # the failed waiters unsubscribe; do not spin
            return
        self._reading = {}
        self.reads += 1
        for key, entries in stream_entries(reply):
            if key == self._wake_key:
                self._wake_cursor = entries[-1][0]
                continue
            for sub in list(self._subs.get(key, ())):
                low = _sid(sub.cursor)
                fresh = [e for e in entries if _sid(e[0]) > low]
                if fresh:
                    sub.cursor = fresh[-1][0]
                    sub.queue.put_nowait(fresh)

    async def aclose(self) -> None:
        """Stop the reader and close every connection (reopened if used again)."""
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])


def unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
    """The error for a state Redis lost while waiting."""
    detail = str(exc) or f"no reply in time ({type(exc).__name__})"
    return BrokerUnavailable(
        f"lost the state Redis at {safe_url(url)} while waiting: {detail}. The runs go on; "
        "wait again once it is back (check ORCH_STATE_URL / ORCH_BROKER_URL)",
        url=safe_url(url),
    )


_MUXES: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], Multiplexer]]
_MUXES = weakref.WeakKeyDictionary()
_MUXES_LOCK = threading.Lock()


def multiplexer(url: str, prefix: str) -> Multiplexer:
    """The running loop's multiplexer for this state Redis and prefix (created on first use)."""
    loop = asyncio.get_running_loop()
    with _MUXES_LOCK:
        per_loop = _MUXES.setdefault(loop, {})
        mux = per_loop.get((url, prefix))
        if mux is None:
            mux = per_loop[(url, prefix)] = Multiplexer(url, Keys(prefix))
    return mux


async def close_async() -> None:
    """Close the running loop's multiplexers (``asyncio.run`` does this by itself at exit)."""
    with _MUXES_LOCK:
        muxes = list(_MUXES.pop(asyncio.get_running_loop(), {}).values())
    for mux in muxes:
        await mux.aclose()
