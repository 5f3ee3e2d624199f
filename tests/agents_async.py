"""``async def`` agents, mergers and validators for the tests (loaded by the test workers).

The streaming ones read a real loopback HTTP server (``tests/model_server.py``) through one
``httpx.AsyncClient`` per worker process, as an agent calling a model provider would.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import httpx
from pydantic import BaseModel, Field

from workers import AgentContext, agent, merger, validator

_clients: dict[int, httpx.AsyncClient] = {}
_lock = threading.Lock()


def client() -> httpx.AsyncClient:
    """One client per process (made on the event loop that uses it)."""
    with _lock:
        made = _clients.get(os.getpid())
        if made is None:
            limits = httpx.Limits(max_connections=5000, max_keepalive_connections=100)
            made = _clients[os.getpid()] = httpx.AsyncClient(limits=limits, timeout=60.0)
        return made


class Nap(BaseModel):
    seconds: float = Field(ge=0, le=120)
    text: str = ""
    fail: bool = False
    block_s: float = Field(default=0.0, ge=0, le=120, description="time.sleep on the loop")
    block_loop: bool = Field(default=False, description="time.sleep in a loop, for ever")
    bursts: int = Field(default=0, ge=0, le=100, description="CPU bursts, an await between")
    burst_ms: float = Field(default=0.0, ge=0, le=1000)


class Napped(BaseModel):
    text: str
    pid: int
    started_at: float
    ended_at: float


@agent("async.nap", input=Nap, output=Napped)
async def nap(inp: Nap, ctx: AgentContext) -> Napped:
    """Await a sleep (or block the loop by mistake, when asked)."""
    started = time.time()
    if inp.block_loop:
        while True:
            time.sleep(0.05)  # the mistake under test: a blocking call inside async def
    if inp.block_s:
        time.sleep(inp.block_s)
    for _ in range(inp.bursts):  # busy, yet never long between two awaits
        end = time.perf_counter() + inp.burst_ms / 1000
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0)
    ctx.progress(0.5, "half way")
    await ctx.sleep_async(inp.seconds)
    if inp.fail:
        raise RuntimeError(f"asked to fail: {inp.text}")
    return Napped(text=inp.text, pid=os.getpid(), started_at=started, ended_at=time.time())


class Stream(BaseModel):
    url: str
    stream_id: str
    chunks: int = Field(default=10, ge=1)
    interval_ms: int = Field(default=100, ge=0)


class Streamed(BaseModel):
    stream_id: str
    chunks: int
    pid: int


@agent("async.stream", input=Stream, output=Streamed)
async def stream(inp: Stream, ctx: AgentContext) -> Streamed:
    """Read a server-sent-events stream to its end, as a model call does."""
    params = {"id": inp.stream_id, "chunks": inp.chunks, "interval_ms": inp.interval_ms}
    got = 0
    async with client().stream("GET", f"{inp.url}/stream", params=params) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                got += 1
    return Streamed(stream_id=inp.stream_id, chunks=got, pid=os.getpid())


class Joined(BaseModel):
    texts: list[str]
    pids: list[int]


@merger("async.join", input=Napped, output=Joined)
async def join(parts: list[Napped], ctx: AgentContext) -> Joined:
    """An async merger: awaits, then joins the texts in index order."""
    await asyncio.sleep(0.01)
    return Joined(texts=[p.text for p in parts], pids=sorted({p.pid for p in parts}))


@validator("async.has_chunks", input=Streamed)
async def has_chunks(out: Streamed) -> bool:
    """An async validator: a stream that delivered something."""
    await asyncio.sleep(0)
    return out.chunks > 0
