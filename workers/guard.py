"""The Celery consumer of every worker and coordinator, guarded: only our own task messages run.

A message that decodes but is not one of ours is dropped to the dead-letter list
(``workers/poison.py``), logged once without its body, and rejected (not requeued):

- no headers, or no ``task`` header (not a Celery protocol 2 task message);
- a task name nobody registered, or one of Celery's built-in ``celery.*`` tasks
  (``celery.accumulate`` would otherwise run);
- no ``id`` header: Celery's request raises ``KeyError('id')`` outside its own error handling,
  the consumer restarts as if the broker were lost, and the message comes back for ever;
- any other header or body Celery cannot read (its ``on_decode_error``, ``on_invalid_task``,
  ``on_unknown_message`` and ``on_unknown_task`` would log the whole body; these do not).

A message of ours by its name's shape (``agents.X``, ``batch.X``, ``mergers.X``) whose task this
worker lacks is not dropped: it is handed back, unchanged (id, headers, body, properties), to
the queue its catalog entry names (its derived queue, ``<agent_queue>.<name>``, when the catalog
has none: workers may be scaling from zero), then acknowledged. Only a message that came from
that very queue already is dead-lettered: no worker consuming it has the agent.

A good message costs four dict lookups before Celery's own handler. The same class also gives
the remote-control node the guarded commands (``workers/remote_control.py``). ``workers/app.py``
selects it with ``worker_consumer``.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer.consumer import Consumer

from workers.async_consumer import route_async_requests
from workers.names import agent_queue_name, catalog_field, is_builtin_task, queue_of_task
from workers.poison import DeadLetterSink, clip, describe_message, log_only
from workers.remote_control import guard_remote_control
from workers.settings import Settings

logger = logging.getLogger(__name__)


def _limits_ok(limits: Any) -> bool:
    # Celery unpacks it only as it hands the request to the pool, after reserving it.
    return limits is None or (type(limits) in (list, tuple) and len(limits) == 2)


class GuardedConsumer(Consumer):  # type: ignore[misc]
    """Celery's consumer, refusing what is not one of our task messages."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = getattr(self.app, "orch_settings", None)
        allowed = settings.remote_control.allow if settings is not None else []
        guard_remote_control(self, allowed)
        route_async_requests(self)

    def update_strategies(self) -> None:
        super().update_strategies()
        for name in [n for n in self.strategies if is_builtin_task(n)]:
            del self.strategies[name]  # refused as "not one of ours", never run

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Any:
        handle = super().create_task_handler(*args, **kwargs)
        strategies = self.strategies
        refuse_broken = self._refuse_broken

        def on_task_received(message: Any) -> Any:
            headers = message.headers
            name = headers.get("task") if type(headers) is dict else None
            if (
                type(name) is str
                and name in strategies
                and type(headers.get("id")) is str
                and _limits_ok(headers.get("timelimit"))
            ):
                try:
                    return handle(message)
                except Exception as exc:
                    return refuse_broken(message, exc)
            if (
                type(name) is str
                and name not in strategies
                and type(headers.get("id")) is str
                and queue_of_task(name) is not None
            ):
                return self._hand_back(message, name)
            return self._refuse(message, self._why_not_ours(headers))

        return on_task_received

    def _hand_back(self, message: Any, name: str) -> None:
        """Re-publish one of our task messages this worker cannot run to its agent's queue."""
        found = queue_of_task(name)
        assert found is not None  # checked by the caller
        kind, agent = found
        queue = self._queue_of(kind, agent)
        info = message.delivery_info if type(message.delivery_info) is dict else {}
        came_from = info.get("routing_key") or info.get("exchange")
        if came_from == queue:
            return self._refuse(
                message, f"no worker consuming queue {clip(queue)!r} has {kind} {clip(agent)!r}"
            )
        props = message.properties if type(message.properties) is dict else {}
        target = self.app.amqp.queues[queue]  # made like the queue Celery sends to
        keep = ("correlation_id", "reply_to", "priority", "delivery_mode", "expiration")
        try:
            with self.app.amqp.producer_pool.acquire(block=True) as producer:
                producer.publish(
                    message.body,
                    exchange=target.exchange.name,
                    routing_key=target.routing_key,
                    headers=message.headers,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    declare=[target],
                    retry=True,
                    **{k: props[k] for k in keep if props.get(k) is not None},
                )
        except Exception as exc:
            if isinstance(exc, self.connection_errors):
                raise  # not acknowledged: the broker gives it back once Celery reconnects
            return self._refuse(message, f"could not hand it back ({type(exc).__name__})")
        logger.info(
            "handed task %s %s back to queue %r: this worker does not have %s %r",
            clip(name),
            clip(message.headers.get("id")),
            queue,
            kind,
            clip(agent),
        )
        if not message.acknowledged:
            message.ack_log_error(logger, self.connection_errors)

    def _queue_of(self, kind: str, agent: str) -> str:
        """The queue the catalog names for this agent (or merger), else its derived one."""
        settings: Settings | None = getattr(self.app, "orch_settings", None)
        base = settings.agent_queue if settings is not None else "agents"
        sink: DeadLetterSink | None = getattr(self.app, "orch_dead_letters", None)
        entry = None
        if sink is not None:
            try:
                entry = sink.store().catalog_entry(catalog_field(kind, agent))
            except Exception as exc:  # state Redis away: the derived queue is the usual one
                logger.warning("catalog lookup for %s %r failed: %s", kind, clip(agent), exc)
        return entry.queue if entry is not None else agent_queue_name(base, kind, agent)

    def _why_not_ours(self, headers: Any) -> str:
        if type(headers) is not dict:
            return "no headers (not a Celery task message)"
        name = headers.get("task")
        if name is None:
            return "no task header (not a Celery protocol 2 task message)"
        if type(name) is not str:
            return "task header is not a string"
        if name in self.app.tasks and name not in self.strategies:
            return f"not one of ours: {clip(name)!r}"
        if name not in self.strategies:
            return f"unknown task {clip(name)!r}"
        if type(headers.get("id")) is not str:
            return "no id header (or not a string)"
        return "timelimit header is not [hard, soft]"

    def _refuse_broken(self, message: Any, exc: Exception) -> None:
        if isinstance(exc, self.connection_errors):
            raise exc  # the broker went away: Celery reconnects (the message comes back)
        self._refuse(message, f"malformed task message ({type(exc).__name__})")

    def _refuse(self, message: Any, reason: str) -> None:
        """Dead-letter one message and reject it (not requeued)."""
        sink: DeadLetterSink | None = getattr(self.app, "orch_dead_letters", None)
        letter = describe_message(reason, message)
        if sink is None:
            log_only(letter)
        else:
            sink.drop(letter)
        if not message.acknowledged:
            message.reject_log_error(logger, self.connection_errors, requeue=False)

    # Celery's own handlers for what it cannot use; each would log the whole body.
    def on_unknown_message(self, body: Any, message: Any) -> None:
        self._refuse(message, self._why_not_ours(message.headers))

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        self._refuse(message, self._why_not_ours(message.headers))

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        why = f"{type(exc).__name__}: {clip(str(exc), 80)}"
        self._refuse(message, f"invalid task message ({why})")

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        self._refuse(message, f"body cannot be decoded ({type(exc).__name__})")
