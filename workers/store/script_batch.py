"""Script calls made in one turn of an event loop, sent as one pipeline.

A worker process with a thousand async subagents in flight makes thousands of start.lua and
finish.lua calls within milliseconds of each other. One at a time, each pays redis-py's
asyncio command path (a connection from the pool, a write, a read, the parse): measured, most of
the event loop's time. Gathered per loop turn into one non-transactional pipeline, they cost
one write and one read for all of them; each caller still gets its own reply or error.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from workers.scripts import Script

__all__ = ["ScriptBatcher"]

Call = tuple[Script, list[str], Sequence[Any], "asyncio.Future[Any]"]
#: The multiplexer's command runner (its timeout and its errors).
Runner = Callable[[Callable[[aioredis.Redis], Awaitable[Any]]], Awaitable[Any]]
#: Calls per pipeline at most: a reply of thousands of envelopes' outcomes stays small.
MAX_BATCH = 512


class ScriptBatcher:
    """Queues script calls and sends each loop turn's as one pipeline."""

    def __init__(self, run: Runner) -> None:
        self._run = run
        self._pending: list[Call] = []
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    def call(self, script: Script, keys: list[str], args: Sequence[Any]) -> asyncio.Future[Any]:
        """The reply of one script call, sent with the others of this loop turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((script, keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._scheduled = False
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), MAX_BATCH):
            task = asyncio.get_running_loop().create_task(
                self._send(pending[start : start + MAX_BATCH])
            )
            self._sending.add(task)  # held until done: a task nobody holds may be collected
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[Call]) -> None:
        try:
            replies = await self._run(lambda r: _pipeline(r, batch))
        except BaseException as exc:  # the connection, a timeout: every caller hears it
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():
                continue  # its caller was cancelled meanwhile
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


async def _pipeline(r: aioredis.Redis, batch: list[Call]) -> list[Any]:
    """EVALSHA each call in one round trip; a server that does not know a script yet (first
    use, or restarted) gets it loaded and those calls sent again."""
    replies = await _evalsha(r, batch)
    missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing:
        for script in {batch[i][0] for i in missing}:
            await r.script_load(script.source)
        again = await _evalsha(r, [batch[i] for i in missing])
        for i, reply in zip(missing, again, strict=True):
            replies[i] = reply
    return replies


async def _evalsha(r: aioredis.Redis, batch: list[Call]) -> list[Any]:
    pipe = r.pipeline(transaction=False)
    for script, keys, args, _ in batch:
        pipe.evalsha(script.sha, len(keys), *keys, *args)
    return list(await pipe.execute(raise_on_error=False))
