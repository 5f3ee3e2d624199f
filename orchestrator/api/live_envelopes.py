"""Read a large run's envelopes while it runs, so that ``wait()`` has little left at the end.

Parsing 1000 envelopes takes a few milliseconds; done after the last result it is most of the
time between that result and ``wait()`` returning. An :class:`LiveEnvelopes` blocks on the run's
``done`` stream for at most :data:`COALESCE_S` at a time (the end still wakes it at once), and
in between reads the ``finished`` events that arrived and fetches those envelopes in one
``HMGET``: a few round trips per coalescing interval, not one per subtask, and no polling of
anything that has not changed. At the end only the envelopes of the last interval are fetched.
"""

from __future__ import annotations

import time
from typing import Any

from workers.models import AgentResult
from workers.store import AsyncStore, RunStore

#: Runs at least this wide have their envelopes read while they run; narrower ones are fetched
#: whole at the end.
LIVE_MIN_N = 200
#: Longest block on the done stream between two reads of the events (bounds the client's wakeups
#: to about 1 / COALESCE_S per second, however fast subtasks finish).
COALESCE_S = 0.02
#: Events read per XREAD.
EVENTS_PER_READ = 5_000


class LiveEnvelopes:
    """The envelopes of one run read so far (``have``), and whether it has ended."""

    def __init__(self, store: RunStore, run_id: str, n: int) -> None:
        self.store = store
        self.run_id = run_id
        self.n = n
        self.have: dict[int, AgentResult] = {}
        self._cursor = "0-0"

    def wait(self, timeout_s: float) -> bool:
        """Block up to ``timeout_s`` for the run to end, reading envelopes meanwhile.

        True once the run has ended.
        """
        limit = time.monotonic() + timeout_s
        while True:
            remaining = limit - time.monotonic()
            if self.store.ended_within(self.run_id, min(remaining, COALESCE_S)):
                return True
            self._read()
            if time.monotonic() >= limit:
                return False

    def _read(self) -> None:
        entries = self.store.read_events(self.run_id, self._cursor, count=EVENTS_PER_READ)
        if not entries:
            return
        self._cursor = entries[-1][0]
        fresh = fresh_indices(entries, self.have, self.n)
        if fresh:
            self.have.update(self.store.some_envelopes(self.run_id, fresh))


class AsyncLiveEnvelopes:
    """:class:`LiveEnvelopes` for asyncio, through the event loop's store."""

    def __init__(self, store: AsyncStore, run_id: str, n: int) -> None:
        self.store = store
        self.run_id = run_id
        self.n = n
        self.have: dict[int, AgentResult] = {}
        self._cursor = "0-0"

    async def read(self) -> None:
        """Fetch the envelopes of subtasks finished since the last read (no waiting)."""
        entries = await self.store.events_after(self.run_id, self._cursor)
        if not entries:
            return
        self._cursor = entries[-1][0]
        fresh = fresh_indices(entries, self.have, self.n)
        if fresh:
            self.have.update(await self.store.some_envelopes(self.run_id, fresh))


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
