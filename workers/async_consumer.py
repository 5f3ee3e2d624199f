"""The consumer side of async agents: their queues get a channel of their own, whose prefetch is
``ORCH_AIO__MAX_IN_FLIGHT``, and their requests skip the pool's slot semaphore.

Celery's consumer reads every queue through one channel whose prefetch is the pool's slot
count: with acks late, a worker of two slots holds two messages, so two async subagents would
be in flight however many the event loop could run. Raising that prefetch would make the
worker hoard sync messages too (taken from the queue, waiting for a slot, while other workers
idle). So the queues whose agents are all ``async def`` move to a second channel of the same
connection, with their own prefetch; the sync queues keep theirs. A queue shared by sync and
async agents stays on the slots' channel (its async agents still run on the loop).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps
from celery.exceptions import TaskRevokedError
from celery.worker.consumer.tasks import Tasks

from workers.pools import runs_async_here

log = logging.getLogger(__name__)

__all__ = ["AsyncQueues", "route_async_requests"]


def route_async_requests(consumer: Any) -> None:
    """Send the requests of async tasks straight to the pool (our pool runs them on the loop):
    prefork's dispatch waits for a free slot first, which an async subagent does not need."""
    runner = getattr(consumer.app, "orch_async", None)
    pool = consumer.pool
    if runner is None or not runs_async_here(pool):
        return
    slots = consumer.on_task_request

    def on_task_request(request: Any) -> Any:
        if not runner.handles(request.name):
            return slots(request)
        try:
            return request.execute_using_pool(pool)
        except TaskRevokedError:
            return None  # revoked while prefetched: Celery has announced it already

    consumer.on_task_request = on_task_request


class AsyncQueues(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consume the async agents' queues on a channel of their own (see the module's doc)."""

    requires = (Tasks,)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        super().__init__(c, **kwargs)
        self.consumer: Any = None
        self.channel: Any = None
        self.prefetch = 0
        self._lock = threading.Lock()

    def start(self, c: Any) -> None:
        names: set[str] = getattr(c.app, "orch_async_queues", set())
        settings = getattr(c.app, "orch_settings", None)
        if not names or settings is None or c.task_consumer is None:
            return
        if not runs_async_here(c.pool):
            log.warning(
                "async agents run one per pool slot: pool %s is not one of ours (use "
                "`orchestrator worker`, or leave -P unset) ",
                type(c.pool).__name__,
            )
            return
        queues = [q for q in c.task_consumer.queues if q.name in names]
        if not queues:
            return
        for queue in queues:
            c.task_consumer.cancel_by_queue(queue.name)
        self.channel = c.connection.channel()
        self.consumer = c.app.amqp.TaskConsumer(
            self.channel, queues=queues, on_decode_error=c.on_decode_error
        )
        self.consumer.qos(prefetch_count=settings.aio.max_in_flight)
        self.prefetch = settings.aio.max_in_flight
        c.app.orch_widen = self.widen
        self.consumer.on_message = c.create_task_handler()
        self.consumer.consume()
        log.info(
            "async queues %s: up to %d in flight on the event loop",
            ", ".join(sorted(q.name for q in queues)),
            settings.aio.max_in_flight,
        )

    def widen(self, delta: int) -> None:
        """One more (or one fewer) message of prefetch: a subagent awaiting its child run
        keeps its message unacked, and must not keep its children's messages out. Called from
        the event loop's thread; the transport reads the count when it next fetches."""
        with self._lock:
            self.prefetch = max(1, self.prefetch + delta)
            if self.channel is not None:
                self.channel.basic_qos(prefetch_size=0, prefetch_count=self.prefetch)

    def stop(self, c: Any) -> None:
        if self.consumer is not None:
            try:
                self.consumer.cancel()
            except Exception as exc:  # the connection is gone already: nothing to cancel
                log.debug("async consumer cancel: %r", exc)

    def shutdown(self, c: Any) -> None:
        self.stop(c)
        for what in (self.consumer, self.channel):
            if what is not None:
                try:
                    what.close()
                except Exception as exc:  # as above
                    log.debug("async consumer close: %r", exc)
        self.consumer = self.channel = None
