"""Read a large run's envelopes while it runs, so that ``wait()`` has little left at the end.

Parsing 1000 envelopes takes a few milliseconds; done after the last result it is most of the
time between that result and ``wait()`` returning. An :class:`EnvelopeFeed` blocks on the run's
``done`` stream for at most :data:`COALESCE_S` at a time (the end still wakes it at once), and
in between reads the ``finished`` events that arrived and fetches those envelopes in one
``HMGET``: a few round trips per coalescing interval, not one per subtask, and no polling of
anything that has not changed. At the end only the envelopes of the last interval are fetched.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.events import stream_entries
from orchestrator.multiplexer import Multiplexer
from workers.models import AgentResult
from workers.results import parse_envelopes
from workers.store import RunStore

#: Runs at least this wide are fed while they run; narrower ones are fetched whole at the end.
FEED_MIN_N = 200
#: Longest block on the done stream between two reads of the events (bounds the client's wakeups
#: to about 1 / COALESCE_S per second, however fast subtasks finish).
COALESCE_S = 0.02
#: Events read per XREAD.
EVENTS_PER_READ = 5_000


class EnvelopeFeed:
    """The envelopes of one run read so far (``have``), and whether it has ended."""

    def __init__(self, store: RunStore, run_id: str, n: int) -> None:
        self.store = store
        self.run_id = run_id
        self.n = n
        self.have: dict[int, AgentResult] = {}
        self._cursor = "0-0"
        self._events = store.keys.events(run_id)
        self._done = store.keys.done(run_id)

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for the run to end, reading envelopes meanwhile.

        True once the run has ended.
        """
        limit = time.monotonic() + timeout_s
        while True:
            remaining = limit - time.monotonic()
            block_ms = max(1, int(min(remaining, COALESCE_S) * 1000))
            if self.store.r.xread({self._done: "0-0"}, count=1, block=block_ms):
                return True
            self._read()
            if time.monotonic() >= limit:
                return False

    def _read(self) -> None:
        got = stream_entries(
            self.store.r.xread({self._events: self._cursor}, count=EVENTS_PER_READ)
        )
        if not got or not got[0][1]:
            return
        entries = got[0][1]
        self._cursor = entries[-1][0]
        fresh = fresh_indices(entries, self.have, self.n)
        if fresh:
            self.have.update(self.store.some_envelopes(self.run_id, fresh))


class AsyncEnvelopeFeed:
    """:class:`EnvelopeFeed` for asyncio, through the event loop's multiplexer."""

    def __init__(self, mux: Multiplexer, store: RunStore, run_id: str, n: int) -> None:
        self.mux = mux
        self.run_id = run_id
        self.n = n
        self.have: dict[int, AgentResult] = {}
        self._cursor = "0-0"
        self._events = store.keys.events(run_id)
        self._results = store.keys.results(run_id)

    async def read(self) -> None:
        """Fetch the envelopes of subtasks finished since the last read (no waiting)."""
        entries = await self.mux.xrange_after(self._events, self._cursor)
        if not entries:
            return
        self._cursor = entries[-1][0]
        fresh = fresh_indices(entries, self.have, self.n)
        if fresh:
            raws = await self.mux.hmget(self._results, [str(i) for i in fresh])
            self.have.update(parse_envelopes([r for r in raws if r is not None]))


def fresh_indices(
    entries: list[tuple[str, dict[str, Any]]], have: dict[int, AgentResult], n: int
) -> list[int]:
    """Indices of the 'finished' events among ``entries`` whose envelope is not in ``have``."""
    out = []
    for _, fields in entries:
        if fields.get("type") == "finished" and "index" in fields:
            index = int(fields["index"])
            if index not in have and 0 <= index < n:
                out.append(index)
    return out
