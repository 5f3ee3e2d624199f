"""The Lua scripts, read once from ``workers/lua/`` and run by their SHA from the synchronous
and the asyncio clients alike.

One registry, as dramatiq's Redis broker keeps: each script's source is read and hashed once
per process; a call is one EVALSHA, and only a server that does not know the script yet (first
use, or a restarted server) costs one SCRIPT LOAD more.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

__all__ = [
    "FINALIZE",
    "FINISH",
    "RESULT",
    "SCRIPTS",
    "SPEND",
    "START",
    "THROTTLE",
    "TREE_SPEND",
    "Script",
]


class Script:
    """One Lua script of ``workers/lua/`` (its KEYS and ARGV are documented in its header)."""

    def __init__(self, filename: str) -> None:
        self.name = filename
        self.source = resources.files("workers").joinpath("lua", filename).read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()

    def __repr__(self) -> str:
        return f"Script({self.name!r})"

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the script on a synchronous client."""
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            client.script_load(self.source)
            return client.evalsha(self.sha, len(keys), *keys, *args)

    async def run_async(
        self, client: aioredis.Redis, keys: Sequence[str], args: Sequence[Any]
    ) -> Any:
        """Run the script on an asyncio client."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


#: Count a subtask's start attempt; say why it must not run (cancelled, reported, unknown run).
START = Script("start.lua")
#: Record an envelope once, keep the run's aggregates, claim a race's win.
FINISH = Script("finish.lua")
#: Add a running subagent's spend to the run's ledger; check the budget.
SPEND = Script("spend.lua")
#: Store the final result once and close the run.
FINALIZE = Script("finalize.lua")
#: Read the final result and, when they stayed in the results hash, its envelopes.
RESULT = Script("result.lua")

#: A fleet-wide rate limit: check and charge a model call, or release it (workers/ratelimit.py).
THROTTLE = Script("throttle.lua")

#: A child run's spend toward its ancestors' budgets (composition).
TREE_SPEND = Script("tree_spend.lua")

SCRIPTS = (START, FINISH, SPEND, FINALIZE, RESULT, THROTTLE, TREE_SPEND)
