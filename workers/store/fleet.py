"""The fleet: workers' and coordinators' heartbeats, the agent catalog, the queues' backlog and
the duration statistics the advisor reads."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from workers.models import CatalogEntry, WorkerInfo
from workers.names import catalog_field
from workers.stats import Sample, StatsSnapshot, snapshot
from workers.store.base import StoreBase

#: A heartbeat entry silent this long is dropped: every run it could matter to has ended.
FORGET_AFTER_S = 7 * 86_400.0


class FleetStore(StoreBase):
    """Presence, catalog and statistics."""

    # -- heartbeats ------------------------------------------------------------------------
    def beat(self, info: WorkerInfo, catalog: Collection[str] = ()) -> set[str]:
        """Publish one process's heartbeat; returns which of the ``catalog`` fields (the ones
        this worker publishes) the catalog lacks, in the same round trip: a server that lost
        the catalog (restarted without persistence, flushed) gets it back at the next beat."""
        pipe = self.pipeline()
        pipe.hset(self.keys.workers, info.hostname, info.model_dump_json())
        if catalog:
            pipe.hkeys(self.keys.catalog)
            # Last served: the catalog hides an entry nobody has served for a while.
            stamp = f"{info.heartbeat_at!r} {info.hostname}"
            pipe.hset(self.keys.served, mapping=dict.fromkeys(catalog, stamp))
        replies = pipe.execute()
        return set(catalog) - set(replies[1]) if catalog else set()

    def leave(self, hostname: str) -> None:
        """Remove a process's heartbeat (it is stopping)."""
        self.r.hdel(self.keys.workers, hostname)

    def processes(self) -> list[WorkerInfo]:
        """Every heartbeat on record, fresh or not."""
        raw: dict[str, str] = self.r.hgetall(self.keys.workers)  # type: ignore[assignment]
        return [WorkerInfo.model_validate_json(v) for v in raw.values()]

    def live_processes(self, max_age_s: float) -> list[WorkerInfo]:
        """Processes whose heartbeat is fresher than ``max_age_s``, by hostname."""
        now = time.time()
        return sorted(
            (w for w in self.processes() if now - w.heartbeat_at < max_age_s),
            key=lambda w: w.hostname,
        )

    def lost_workers(self, lost_after_s: float, now: float) -> set[str]:
        """Hostnames silent for more than ``lost_after_s`` (long-dead entries are dropped)."""
        lost, forgotten = set(), []
        for info in self.processes():
            age = now - info.heartbeat_at
            if age > max(FORGET_AFTER_S, self.ttl_s):
                forgotten.append(info.hostname)
            elif age > lost_after_s:
                lost.add(info.hostname)
        if forgotten:
            self.r.hdel(self.keys.workers, *forgotten)
        return lost

    # -- the catalog -----------------------------------------------------------------------
    def publish_catalog(self, entries: Mapping[str, CatalogEntry]) -> None:
        """Write catalog entries (field -> entry)."""
        if entries:
            mapping = {k: e.model_dump_json() for k, e in entries.items()}
            self.r.hset(self.keys.catalog, mapping=dict[Any, Any](mapping))

    def catalog_fields(self) -> set[str]:
        """The fields of the catalog (``agent:<name>``, ...), without their entries."""
        fields: list[str] = self.r.hkeys(self.keys.catalog)  # type: ignore[assignment]
        return set(fields)

    def catalog_entries(self) -> dict[str, CatalogEntry]:
        """The whole catalog (field -> entry)."""
        raw: dict[str, str] = self.r.hgetall(self.keys.catalog)  # type: ignore[assignment]
        return {k: CatalogEntry.model_validate_json(v) for k, v in raw.items()}

    def catalog_view(self) -> tuple[dict[str, CatalogEntry], dict[str, tuple[float, str]]]:
        """The whole catalog, and when (and by which worker) each entry was last served, in
        one round trip."""
        pipe = self.pipeline()
        pipe.hgetall(self.keys.catalog)
        pipe.hgetall(self.keys.served)
        raw, served = pipe.execute()
        entries = {k: CatalogEntry.model_validate_json(v) for k, v in raw.items()}
        return entries, {k: _served(v) for k, v in served.items()}

    def catalog_entry(self, field: str) -> CatalogEntry | None:
        """One catalog entry by field (``agent:<name>``), or None."""
        raw: str | None = self.r.hget(self.keys.catalog, field)  # type: ignore[assignment]
        return CatalogEntry.model_validate_json(raw) if raw else None

    def unserved(self, entries: Sequence[CatalogEntry], max_age_s: float) -> list[str]:
        """Names of the ``entries`` that no live worker serves (heartbeat fresher than
        ``max_age_s``), in order."""
        live = self.live_processes(max_age_s)
        return [e.name for e in entries if not any(w.serves_entry(e) for w in live)]

    def unserved_agents(self, agents: Collection[str], max_age_s: float) -> set[str]:
        """Which of these agent names no live worker serves (or the catalog lacks)."""
        if not agents:
            return set()
        names = sorted(set(agents))
        pipe = self.pipeline()
        pipe.hmget(self.keys.catalog, [catalog_field("agent", n) for n in names])
        pipe.hgetall(self.keys.workers)
        raw, workers = pipe.execute()
        now = time.time()
        live = [
            w
            for w in (WorkerInfo.model_validate_json(v) for v in workers.values())
            if now - w.heartbeat_at < max_age_s
        ]
        return {
            name
            for name, text in zip(names, raw, strict=True)
            if text is None
            or not any(w.serves_entry(CatalogEntry.model_validate_json(text)) for w in live)
        }

    # -- the sweeper's progress ------------------------------------------------------------
    def mark_swept(self, hostname: str, at: float, keep_s: int) -> None:
        """Record that this coordinator's sweeper completed a round (kept ``keep_s``)."""
        self.r.set(self.keys.swept(hostname), repr(at), ex=keep_s)

    def swept_at(self, hostnames: Sequence[str]) -> dict[str, float | None]:
        """When each coordinator's sweeper last completed a round (None: not recently)."""
        if not hostnames:
            return {}
        raw: list[str | None] = self.r.mget([self.keys.swept(h) for h in hostnames])  # type: ignore[assignment]
        return {h: float(v) if v else None for h, v in zip(hostnames, raw, strict=True)}

    # -- statistics ------------------------------------------------------------------------
    def queue_samples(self, pipe: Any, samples: Sequence[Sample]) -> None:
        """Add the commands that append ``samples`` to a pipeline of this store."""
        k = self.keys
        for name, text in samples:
            key = k.stats(name)
            pipe.lpush(key, text)
            pipe.ltrim(key, 0, self.stats_samples - 1)
            pipe.expire(key, self.stats_ttl_s)
            pipe.hincrby(k.stats_counts, key, 1)
        pipe.expire(k.stats_counts, self.stats_ttl_s)

    def record_samples(self, samples: Sequence[Sample]) -> None:
        """Append once-per-run samples (merge time, coordinator overhead), one round trip."""
        if not samples:
            return
        pipe = self.pipeline()
        self.queue_samples(pipe, samples)
        pipe.execute()

    def planning_facts(
        self, series: Sequence[str], queues: Sequence[str]
    ) -> tuple[StatsSnapshot, list[WorkerInfo], dict[str, int]]:
        """What pre-flight reads, in one round trip: the statistics of ``series``, every
        heartbeat, and the backlog of ``queues`` (pass none when the broker is elsewhere)."""
        k = self.keys
        pipe = self.pipeline()
        for name in series:
            pipe.lrange(k.stats(name), 0, -1)
        pipe.hmget(k.stats_counts, [k.stats(n) for n in series] or ["-"])
        pipe.hgetall(k.workers)
        for q in queues:
            pipe.llen(k.queue(q))
        replies = pipe.execute()
        stats = snapshot(series, replies[: len(series) + 1])
        workers = [WorkerInfo.model_validate_json(v) for v in replies[len(series) + 1].values()]
        backlog = dict(zip(queues, replies[len(series) + 2 :], strict=True))
        return stats, workers, {q: int(v) for q, v in backlog.items() if v}


def _served(value: str) -> tuple[float, str]:
    """``"<epoch s> <hostname>"`` of the served hash (a bad value: never served)."""
    at, _, host = value.partition(" ")
    try:
        return float(at), host
    except ValueError:
        return 0.0, host
