"""What the fleet benchmark (bench/fleet.py) runs: one model call each, a stream read from the
loopback model server (tests/model_server.py).

``fleet.stream`` is our async agent; ``fleet.raw_stream`` is the same call written as a plain
``celery.shared_task`` with a blocking client, as someone would by hand for a threads or gevent
pool. Both count the stream's data events and say when they finished (the race's win moment).
Loaded by workers through ``ORCH_AGENT_MODULES=workers.agents,bench.fleet_agents``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import httpx
from celery import shared_task
from pydantic import BaseModel

from workers import AgentContext, agent, validator

#: Enough for every stream of a fleet at once (the benchmark goes to 2000).
MAX_CONNECTIONS = 4000
#: Generous: a thousand connects at once queue in the listener's backlog.
TIMEOUT = httpx.Timeout(300.0, connect=60.0)
LIMITS = httpx.Limits(max_connections=MAX_CONNECTIONS, max_keepalive_connections=MAX_CONNECTIONS)
#: Clients per process (``FLEET_HTTP_CLIENTS``, default 1), used in turn. httpcore's pool walks
#: every connection it holds each time a request starts or ends (encode/httpcore#1035): one pool
#: of a thousand open streams spends ~20 ms of CPU per stream, several smaller pools far less.
CLIENTS = max(1, int(os.environ.get("FLEET_HTTP_CLIENTS", "1")))
_turn = itertools.count()  # next() on it is atomic under the GIL: safe from many threads


class StreamIn(BaseModel):
    """The stream to read: ``<server>/stream?id=..&chunks=..&interval_ms=..``."""

    url: str


class StreamOut(BaseModel):
    """How many data events were read, and when the last one was."""

    chunks: int
    finished_at: float


def _count(line: str) -> int:
    return int(line.startswith("data: ") and line != "data: [DONE]")


# -- ours ---------------------------------------------------------------------------------------

_async_clients: list[httpx.AsyncClient] = []
_async_owner: tuple[int, asyncio.AbstractEventLoop] | None = None


def async_client() -> httpx.AsyncClient:
    """One of the process's clients, in turn; new ones if the process forked or the loop
    changed (a client's connections belong to the loop that opened them)."""
    global _async_owner
    owner = (os.getpid(), asyncio.get_running_loop())
    if _async_owner != owner:
        _async_clients[:] = [
            httpx.AsyncClient(limits=LIMITS, timeout=TIMEOUT) for _ in range(CLIENTS)
        ]
        _async_owner = owner
    return _async_clients[next(_turn) % CLIENTS]


#: ``FLEET_HTTP=asyncio``: read the stream with plain asyncio streams instead of httpx, to
#: measure the runtime apart from the HTTP client's own cost (httpx's pool is most of it).
PLAIN = os.environ.get("FLEET_HTTP", "httpx") == "asyncio"


async def _plain_stream(url: str) -> int:
    """GET an SSE stream over one fresh connection and count its data events (HTTP/1.1,
    chunked; only what the loopback model server sends)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        writer.write(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
        chunks = 0
        async for raw in reader:  # chunk sizes and blank lines count nothing
            line = raw.decode("utf-8", "replace").strip()
            if line == "data: [DONE]":
                break
            chunks += _count(line)
        return chunks
    finally:
        writer.close()  # a cancel lands in the read above: the server sees the hang-up


@agent("fleet.stream", input=StreamIn, output=StreamOut, description="Reads one model stream.")
async def fleet_stream(inp: StreamIn, ctx: AgentContext) -> StreamOut:
    if PLAIN:
        return StreamOut(chunks=await _plain_stream(inp.url), finished_at=time.time())
    chunks = 0
    async with async_client().stream("GET", inp.url) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            chunks += _count(line)
    return StreamOut(chunks=chunks, finished_at=time.time())


@validator("fleet.any", input=StreamOut, description="Accepts every stream's output.")
def fleet_any(out: StreamOut) -> bool:
    return True


# -- raw Celery ---------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])
_clients: list[httpx.Client] = []
_clients_pid = -1
_clients_lock = threading.Lock()


def raw_task(name: str) -> Callable[[F], F]:
    """``celery.shared_task`` under a name (typed for the checker)."""
    return cast(Callable[[F], F], shared_task(name=name))


def sync_client() -> httpx.Client:
    """One of the process's blocking clients, in turn, shared by its threads (or greenlets)."""
    global _clients_pid
    if _clients_pid != os.getpid():
        # The first tasks start together: without the lock each would make a set of clients
        # (an httpx.Client holds its own TLS context, ~1 MiB with OpenSSL 3 here).
        with _clients_lock:
            if _clients_pid != os.getpid():
                _clients[:] = [httpx.Client(limits=LIMITS, timeout=TIMEOUT) for _ in range(CLIENTS)]
                _clients_pid = os.getpid()
    return _clients[next(_turn) % CLIENTS]


@raw_task("fleet.raw_stream")
def raw_stream(url: str) -> dict[str, Any]:
    chunks = 0
    with sync_client().stream("GET", url) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            chunks += _count(line)
    return {"chunks": chunks, "finished_at": time.time()}
