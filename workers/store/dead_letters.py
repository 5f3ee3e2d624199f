"""Dead letters: what a worker or coordinator took off a queue, could not understand and dropped.

Each entry is a redacted description (never the message's payload), newest first, in a list
that is capped and expires, beside a counter of every drop ever made.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from workers.store.base import StoreBase

#: Entries kept (LTRIM): enough to see what is arriving, bounded whatever arrives.
DEAD_LETTERS_KEPT = 1000
#: The list and its counter expire this long after the latest drop.
DEAD_LETTER_TTL_S = 7 * 86_400


@dataclass(frozen=True)
class DeadLetter:
    """One dropped item, described without its payload."""

    reason: str
    queue: str
    size_bytes: int
    #: The item's first bytes, only when it is not JSON (a JSON envelope may carry a payload).
    head: str = ""
    #: The task name and id the headers gave, when there were any.
    task: str = ""
    task_id: str = ""
    #: The process that dropped it, and when (epoch s).
    host: str = ""
    at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DeadLetter:
        known = {f.name for f in fields(cls)}
        try:
            raw = json.loads(text)
            return cls(**{k: v for k, v in raw.items() if k in known})
        except (ValueError, TypeError, AttributeError):
            return cls(reason="unreadable dead-letter entry", queue="?", size_bytes=len(text))


@dataclass(frozen=True)
class DeadLetterReport:
    """How many items were ever dropped, and the latest ones kept."""

    total: int
    latest: list[DeadLetter]


class DeadLetterStore(StoreBase):
    """The dead-letter list."""

    def add_dead_letter(self, letter: DeadLetter) -> None:
        """Keep one drop's description (one round trip: push, trim, count, expire)."""
        k = self.keys
        pipe = self.pipeline()
        pipe.lpush(k.dead_letters, letter.to_json())
        pipe.ltrim(k.dead_letters, 0, DEAD_LETTERS_KEPT - 1)
        pipe.expire(k.dead_letters, DEAD_LETTER_TTL_S)
        pipe.incr(k.dead_letters_count)
        pipe.expire(k.dead_letters_count, DEAD_LETTER_TTL_S)
        pipe.execute()

    def dead_letters(self, limit: int = 10) -> DeadLetterReport:
        """The drop count and the ``limit`` (at least 1) latest entries, newest first."""
        k = self.keys
        pipe = self.pipeline()
        pipe.get(k.dead_letters_count)
        pipe.lrange(k.dead_letters, 0, max(limit, 1) - 1)
        total, entries = pipe.execute()
        return DeadLetterReport(int(total or 0), [DeadLetter.from_json(e) for e in entries])
