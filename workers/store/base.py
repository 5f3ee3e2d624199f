"""What every part of the store shares: one Redis client, the key names and the limits."""

from __future__ import annotations

import json
from typing import Any

import redis

from workers.names import Keys


def flat(fields: dict[str, Any]) -> dict[Any, Any]:
    """Hash fields as Redis takes them: strings as they are, anything else as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in fields.items()}


class StoreBase:
    """The Redis client and the names and limits the store's parts share."""

    def __init__(
        self,
        client: redis.Redis,
        keys: Keys,
        *,
        ttl_s: int,
        events_maxlen: int,
        recent: int,
        stats_samples: int = 200,
        stats_ttl_s: int = 7 * 86_400,
    ) -> None:
        #: The raw client: only the store's own modules touch it.
        self.r = client
        self.keys = keys
        self.ttl_s = ttl_s
        self.maxlen = events_maxlen
        self.recent = recent
        self.stats_samples = stats_samples
        self.stats_ttl_s = stats_ttl_s

    def pipeline(self) -> Any:
        """A non-transactional pipeline: several commands, one round trip."""
        return self.r.pipeline(transaction=False)

    def keep(self, pipe: Any, *keys: str) -> None:
        """Add an EXPIRE of each run key to a pipeline that writes them.

        A server that lost the run (restarted without persistence, flushed) gets the key back
        from the write alone, without a TTL: it would stay forever.
        """
        for key in keys:
            pipe.expire(key, self.ttl_s)

    def ping(self) -> None:
        """One round trip (raises redis' connection errors when the server is away)."""
        self.r.ping()

    def close(self) -> None:
        """Release the client's connections."""
        self.r.close()
