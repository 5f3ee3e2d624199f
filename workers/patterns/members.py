"""The members of a run as Celery messages: one signature per subagent (or per batch of one
agent's subagents), built as they are sent, and the pipelined send."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, overload

from celery import Celery
from celery.canvas import Signature
from kombu.exceptions import BatchPublishError

from workers.models import CatalogEntry, TaskMeta
from workers.names import batch_id, batch_task_name, subtask_id

if TYPE_CHECKING:
    from workers.request import OrchestrationRequest, TaskSpec

_REPR_MAX = 200
#: Messages per pipelined round trip when sending members: small enough that the first
#: workers start while the rest are still being sent.
SEND_BATCH = 64
#: A publish batch that never flushes by itself (send_members flushes it).
UNBOUNDED = 1 << 30

#: Publish retries after a failed pipelined flush: ride out a broker restart (about 8 s).
RIDE_OUT = {"max_retries": 10, "interval_start": 0.1, "interval_step": 0.2, "interval_max": 1.0}

log = logging.getLogger(__name__)


def send_members(
    app: Celery,
    members: Sequence[Signature],
    group_id: str,
    *,
    start: int = 0,
    on_flush: Callable[[int], None] | None = None,
) -> None:
    """Send every member, pipelined, under one group id (index = position).

    A Celery group applied as a canvas subscribes to every member's result channel (two Redis
    commands each) and stores every result; nothing here reads them: the envelopes go to the
    run's results hash. kombu's publish batch pipelines the LPUSHes, one round trip per
    SEND_BATCH messages, the first message at once; transports without it publish one by one.

    A pipelined flush is not retried by kombu (it cannot know which commands ran). If one
    fails, the rest, from the first message of that flush, are sent one by one with publish
    retries that ride out a broker restart (RIDE_OUT): some may go twice, which at-least-once
    delivery allows (a subtask's envelope is recorded once).

    ``start``: the first member to send (those before were sent by a coordinator that died);
    ``on_flush(sent)``: called after each full batch, so another coordinator can go on from
    there (not after the first message: it must leave at once).
    """
    sent = start  # members confirmed by a successful flush

    def publish(producer: Any, index: int, **retry: Any) -> None:
        sig = members[index]
        app.send_task(
            sig.task,
            kwargs=sig.kwargs,
            producer=producer,
            ignore_result=True,
            add_to_parent=False,
            group_id=group_id,
            group_index=index,
            **retry,
            **sig.options,
        )

    with app.producer_or_acquire() as producer:
        try:
            with producer.batch(max_size=UNBOUNDED) as batch:  # flushed here, not by size
                for index in range(start, len(members)):
                    publish(producer, index)
                    if index == start or (index + 1) % SEND_BATCH == 0 or index == len(members) - 1:
                        batch.flush()
                        sent = index + 1
                        if on_flush is not None and (index + 1) % SEND_BATCH == 0:
                            on_flush(sent)
        except BatchPublishError as exc:
            log.warning(
                "pipelined send failed after %d of %d messages (%s): sending the rest one by one",
                sent,
                len(members),
                exc.__cause__ or exc,
            )
            for index in range(sent, len(members)):
                publish(producer, index, retry=True, retry_policy=RIDE_OUT)


def payload_repr(task: TaskSpec) -> str:
    """What Flower may show of a payload: nothing when secret, truncated otherwise."""
    if task.secret:
        return "<secret>"
    text = repr(task.payload)
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


def agent_signature(
    app: Celery,
    req: OrchestrationRequest,
    index: int,
    entry: CatalogEntry,
    meta: TaskMeta,
) -> Signature:
    """The Celery signature of subtask ``index``."""
    task = req.tasks[index]
    kwargs: dict[str, Any] = {
        "run_id": req.run_id,
        "index": index,
        "payload": task.payload,
        "meta": meta.model_dump(mode="json"),
    }
    return app.signature(
        entry.task_name,
        kwargs=kwargs,
        queue=entry.queue,
        task_id=subtask_id(req.run_id, index),
        argsrepr=f"run={req.run_id} pattern={req.pattern.value} index={index}/{len(req.tasks)}",
        kwargsrepr=f"payload={payload_repr(task)}",
    )


def batch_signature(
    app: Celery,
    req: OrchestrationRequest,
    number: int,
    indices: list[int],
    entry: CatalogEntry,
    meta: TaskMeta,
) -> Signature:
    """One message running several subagents of one agent, each with its own envelope."""
    secret = any(req.tasks[i].secret for i in indices)
    return app.signature(
        batch_task_name(entry.name),
        kwargs={
            "run_id": req.run_id,
            "items": [[i, req.tasks[i].payload] for i in indices],
            "meta": meta.model_dump(mode="json"),
        },
        queue=entry.queue,
        task_id=batch_id(req.run_id, number),
        argsrepr=f"run={req.run_id} pattern={req.pattern.value} batch={number} "
        f"indices={indices[0]}..{indices[-1]} ({len(indices)} of {len(req.tasks)})",
        kwargsrepr="payloads=<secret>" if secret else f"payloads={len(indices)}",
    )


class LazySignatures(Sequence[Signature]):
    """Signatures built when first read: the first message goes out before the thousandth
    signature exists."""

    def __init__(
        self, n: int, make: Callable[[int], Signature], chunks: list[list[int]] | None = None
    ) -> None:
        self._made: list[Signature | None] = [None] * n
        self._make = make
        #: Batched: the subtask indices each message carries (lost-worker recovery needs them).
        self.chunks = chunks

    def __len__(self) -> int:
        return len(self._made)

    @overload
    def __getitem__(self, index: int) -> Signature: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Signature]: ...

    def __getitem__(self, index: int | slice) -> Signature | Sequence[Signature]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        made = self._made[index]
        if made is None:
            made = self._made[index] = self._make(index % len(self))
        return made


def member_signatures(
    app: Celery,
    req: OrchestrationRequest,
    entries: list[CatalogEntry],
    meta: TaskMeta,
    *,
    batches: bool,
) -> LazySignatures:
    """One signature per subagent, or (``batches`` and a batch size) per batch of one agent's
    subagents; built when sent."""
    n = len(req.tasks)
    size = req.batch_size or 1
    if size <= 1 or not batches:
        return LazySignatures(n, lambda i: agent_signature(app, req, i, entries[i], meta))
    by_agent: dict[str, list[int]] = {}
    for i in range(n):
        by_agent.setdefault(entries[i].name, []).append(i)
    chunks = [
        indices[start : start + size]
        for indices in by_agent.values()
        for start in range(0, len(indices), size)
    ]
    return LazySignatures(
        len(chunks),
        lambda b: batch_signature(app, req, b, chunks[b], entries[chunks[b][0]], meta),
        chunks,
    )
