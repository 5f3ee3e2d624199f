"""What the coordinator service reads and writes: expansion bookkeeping, the merger message a
gather's last member sends, and the views lost-worker recovery works from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workers.names import indices as fields_of
from workers.stats import Sample
from workers.store.base import flat
from workers.store.fleet import FleetStore
from workers.store.records import RecordStore

#: Run record fields: the JSON of the merger's message (stored by the coordinator), and when it
#: was sent (by the member whose envelope completed the gather, or a coordinator).
MERGER_MESSAGE = "merger_message"
MERGER_SENT_AT = "merger_sent_at"
#: Run record field: how many of the run's messages its coordinator has sent so far.
SENT = "sent"


@dataclass(frozen=True)
class RecoveryView:
    """What lost-worker recovery needs of one open run."""

    started: dict[str, str]
    reported: set[str]
    resent: dict[str, str]
    fields: dict[str, str | None]


class ServiceStore(RecordStore, FleetStore):
    """The coordinator's bookkeeping."""

    def expansion_state(self, run_id: str) -> tuple[bool, bool, bool, str | None]:
        """(ended, has a record, already expanded, execution), one round trip."""
        pipe = self.pipeline()
        pipe.exists(self.keys.result(run_id))
        pipe.hmget(self.keys.run(run_id), ["run_id", "expanded_at", "execution"])
        ended, (known, expanded, execution) = pipe.execute()
        return bool(ended), bool(known), bool(expanded), execution

    def execution_of(self, run_id: str) -> str | None:
        """How the run executes (parallel or sequential), as pre-flight recorded it."""
        value: str | None = self.r.hget(self.keys.run(run_id), "execution")  # type: ignore[assignment]
        return value

    def record_expanded(
        self,
        run_id: str,
        *,
        expanded_at: float,
        n: int,
        samples: Sequence[Sample],
        payloads: list[Any] | None,
        batches: list[list[int]] | None,
    ) -> None:
        """After the send, in one round trip: when, the 'queued' and 'expanded' events, the
        coordinator's samples, and what recovery may resend (payloads, batch layout)."""
        k = self.keys
        pipe = self.pipeline()
        pipe.hset(k.run(run_id), "expanded_at", repr(expanded_at))
        for kind in ("queued", "expanded"):  # every subtask message sent
            pipe.xadd(
                k.events(run_id),
                {"type": kind, "n": str(n), "ts": repr(expanded_at)},
                maxlen=self.maxlen,
                approximate=True,
            )
        self.queue_samples(pipe, samples)
        if payloads is not None:
            # Kept while the run is open (finalize deletes them), to resend lost subtasks.
            key = k.payloads(run_id)
            pipe.hset(key, mapping={str(i): json.dumps(p) for i, p in enumerate(payloads)})
            pipe.expire(key, self.ttl_s)
        if batches:  # which subtasks go down with a lost batch message
            pipe.hset(k.run(run_id), "batches", json.dumps(batches))
        self.keep(pipe, k.run(run_id), k.events(run_id))
        pipe.execute()

    # -- the expansion lease: who sends a run's messages ----------------------------------
    def start_expansion(
        self, run_id: str, host: str, lease_s: float, fields: dict[str, Any]
    ) -> bool:
        """Take the run's expansion lease and record ``fields`` (status running, ...), one
        round trip; False (fields still written, harmless) when another coordinator holds it."""
        pipe = self.pipeline()
        pipe.set(self.keys.expander(run_id), host, nx=True, px=int(lease_s * 1000))
        pipe.hset(self.keys.run(run_id), mapping=flat(fields))
        pipe.expire(self.keys.run(run_id), self.ttl_s)  # a server that lost it must not keep it
        took, *_ = pipe.execute()
        return bool(took)

    def take_expansion(self, run_id: str, host: str, lease_s: float) -> bool:
        """Take the expansion lease of a run whose coordinator stopped sending."""
        return bool(self.r.set(self.keys.expander(run_id), host, nx=True, px=int(lease_s * 1000)))

    def expansion_progress(self, run_id: str, sent: int, host: str, lease_s: float) -> None:
        """Messages sent so far, and the lease renewed (one round trip per send batch)."""
        pipe = self.pipeline()
        pipe.hset(self.keys.run(run_id), SENT, str(sent))
        pipe.expire(self.keys.run(run_id), self.ttl_s)
        pipe.set(self.keys.expander(run_id), host, px=int(lease_s * 1000))
        pipe.execute()

    def stalled_expansions(self, run_ids: Sequence[str], now: float, grace_s: float) -> list[str]:
        """Runs among ``run_ids`` that nobody is sending and that were never fully sent: their
        coordinator died while sending (running), or before it started (submitted more than
        ``grace_s`` ago), and their request is kept."""
        k = self.keys
        pipe = self.pipeline()
        for run_id in run_ids:
            pipe.hmget(k.run(run_id), ["status", "expanded_at", "created_at"])
            pipe.exists(k.expander(run_id))
            pipe.exists(k.request(run_id))
        replies = pipe.execute()
        out = []
        for n, run_id in enumerate(run_ids):
            (status, expanded, created), leased, kept = replies[3 * n : 3 * n + 3]
            if expanded or leased or not kept:
                continue
            waited = status == "submitted" and created and now - float(created) > grace_s
            if status == "running" or waited:
                out.append(run_id)
        return out

    def expansion_to_resume(self, run_id: str) -> tuple[str | None, int]:
        """(the kept wire request, messages already sent)."""
        pipe = self.pipeline()
        pipe.get(self.keys.request(run_id))
        pipe.hget(self.keys.run(run_id), SENT)
        request, sent = pipe.execute()
        return request, int(sent or 0)

    # -- the merger message --------------------------------------------------------------
    def merger_message(self, run_id: str) -> tuple[str | None, bool, bool]:
        """(the stored merger message, already sent?, every member reported, or an early
        quorum reached?)."""
        values: list[str | None] = self.r.hmget(  # type: ignore[assignment]
            self.keys.run(run_id), ["done", "n", MERGER_MESSAGE, MERGER_SENT_AT, "quorum_at"]
        )
        done, n, message, sent, quorum_at = values
        return message, bool(sent), int(done or 0) >= int(n or 0) or bool(quorum_at)

    def mark_merger_sent(self, run_id: str, at: float) -> None:
        """Record that the merger's message went out."""
        self.update_run(run_id, **{MERGER_SENT_AT: repr(at)})

    def claim_merger_send(self, run_id: str, at: float) -> bool:
        """Claim the send of a merger (one sender wins)."""
        return self.set_run_field_once(run_id, MERGER_SENT_AT, repr(at))

    def release_merger_send(self, run_id: str) -> None:
        """A claimed send failed: leave the merger to the coordinators' resend."""
        self.r.hdel(self.keys.run(run_id), MERGER_SENT_AT)

    def mergers_due(self, run_ids: Sequence[str]) -> list[tuple[str, str, float]]:
        """(run, merger message, when every member had reported) of the gathers among
        ``run_ids`` whose members all reported (or whose early quorum arrived) and whose merger
        nobody sent."""
        fields = [MERGER_MESSAGE, MERGER_SENT_AT, "all_reported_at", "quorum_at"]
        pipe = self.pipeline()
        for run_id in run_ids:
            pipe.hmget(self.keys.run(run_id), fields)
        out = []
        for run_id, (message, sent, all_at, quorum_at) in zip(run_ids, pipe.execute(), strict=True):
            reported = quorum_at or all_at
            if message and not sent and reported:
                out.append((run_id, message, float(reported)))
        return out

    # -- recovery --------------------------------------------------------------------------
    def recovery_view(self, run_id: str, fields: Sequence[str]) -> RecoveryView:
        """Started, reported and resent subtasks, and some record fields, one round trip."""
        k = self.keys
        pipe = self.pipeline()
        pipe.hgetall(k.started_by(run_id))
        pipe.hkeys(k.results(run_id))
        pipe.hgetall(k.resent(run_id))
        pipe.hmget(k.run(run_id), list(fields))
        started, reported, resent, values = pipe.execute()
        return RecoveryView(started, set(reported), resent, dict(zip(fields, values, strict=True)))

    def payloads(self, run_id: str, indices: Sequence[str]) -> list[str | None]:
        """The kept payload JSON of these subtasks (None: not kept)."""
        values: list[str | None] = self.r.hmget(
            self.keys.payloads(run_id), fields_of(map(int, indices))
        )  # type: ignore[assignment]
        return values

    def mark_resent(self, run_id: str, index: str, lost_on: str) -> None:
        """Record that a subtask was sent again for a lost worker (and say so in the events)."""
        k = self.keys
        pipe = self.pipeline()
        pipe.hset(k.resent(run_id), index, lost_on)
        pipe.expire(k.resent(run_id), self.ttl_s)
        pipe.execute()
        self.event(run_id, "resent", index=index, lost_worker=lost_on)
