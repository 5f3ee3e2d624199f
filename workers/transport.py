# mypy: disable-error-code="no-untyped-call"
# (kombu's channel methods carry no annotations; this module overrides and calls them.)
"""kombu's Redis transport, guarded: an item on a queue that is not a readable kombu envelope is
dropped to the dead-letter list instead of taking the consumer down.

kombu pops an item (``BRPOP`` in ``_brpop_read``, ``RPOP`` in ``_get``), decodes it as JSON and
builds a message from it (the base64 body decoded, the delivery tag and info read) before Celery
sees anything; an error there propagates out of the event loop and the worker stops. Here the
same steps run, and an item that fails them is described (queue, size, its first bytes unless it
is JSON) and handed to the app's sink (``workers/poison.py``). A good message costs an
``isinstance`` or two more, no extra round trip. ``workers/app.py`` selects this transport for
``redis://``, ``rediss://`` and ``unix://`` brokers; other brokers keep their own.
"""

from __future__ import annotations

from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import base as virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import dumps, loads

from workers.poison import clip, describe_item, log_only, sink_for
from workers.store import DeadLetter


class _Unreadable(Exception):
    """An item is not a kombu envelope (never leaves this module: the channel drops the item)."""

    def __init__(self, reason: str, payload: Any) -> None:
        super().__init__(reason)
        self.reason = reason
        self.payload = payload


def _why(exc: BaseException) -> str:
    return f"not a kombu envelope ({type(exc).__name__})"


class GuardedMessage(virtual.Message):
    """A message whose envelope was checked: what kombu's QoS and restore read is there."""

    def __init__(self, payload: Any, channel: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(payload, channel=channel, **kwargs)
        except Exception as exc:  # any shape or body-encoding error of one item
            raise _Unreadable(_why(exc), payload) from None
        info = self.delivery_info
        if not (
            isinstance(payload.get("headers"), dict)
            and isinstance(self.delivery_tag, str)
            and isinstance(info.get("exchange"), str)
            and isinstance(info.get("routing_key"), str)
        ):
            raise _Unreadable(
                "not a kombu envelope (headers, delivery_tag or delivery_info missing)", payload
            )


class GuardedChannel(kombu_redis.Channel):
    """The Redis channel, dropping what it cannot read."""

    Message = GuardedMessage

    def _drop(self, letter: DeadLetter) -> None:
        sink = sink_for(self.connection.client.transport_options)
        if sink is None:
            log_only(letter)
        else:
            sink.drop(letter)

    def _read(self, queue: str, item: Any) -> Any:
        """The decoded item, or Empty after dropping it."""
        try:
            return loads(bytes_to_str(item))
        except Exception:  # any decoding error of one item: not JSON, bad UTF-8, too deep
            self._drop(describe_item("not JSON", queue, item))
            raise Empty() from None

    def _create_client(self, asynchronous: bool = False) -> Any:
        # kombu builds a new redis client object for every ack, every publish (task events
        # included) and every unacked-index write (its conn_or_acquire): measured, a third of a
        # worker main process's time with a thousand async subagents in flight. A client over
        # the channel's connection pool is thread-safe, so one per pool serves them all; the
        # blocking ones (BRPOP, pub/sub) keep their own.
        if asynchronous:
            return super()._create_client(asynchronous)
        pool = self.pool
        cached = self.__dict__.get("_orch_client")
        if cached is None or cached.connection_pool is not pool:
            cached = self.__dict__["_orch_client"] = super()._create_client(False)
        return cached

    def _connparams(self, asynchronous: bool = False) -> Any:
        # While the broker is still down, the consumer can close this channel's connection
        # under its own pub/sub reconnect; kombu then reads ``connection.client`` as None and
        # raises AttributeError, which Celery treats as unrecoverable: the worker died on a
        # broker restart. Said as a connection error, it is ridden out like any other.
        if self.connection.client is None:
            raise ConnectionResetError("the broker connection was closed while reconnecting")
        return super()._connparams(asynchronous)

    def _brpop_read(self, **options: Any) -> bool:
        # kombu's own, but for the item's decoding and delivery (the two steps guarded).
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            payload = self._read(dest, item)
            try:
                self.connection._deliver(payload, dest)
            except _Unreadable as exc:
                self._drop(describe_item(exc.reason, dest, item))
                raise Empty() from None
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu's own
            self._flush_brpop_reauth()

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        with self.conn_or_acquire() as client:
            for pri in self.priority_steps:
                item = client.rpop(self._q_for_pri(queue, pri))
                if item:
                    self._maybe_update_queues_expire(client, queue)
                    return self._read(queue, item)
            self._maybe_update_queues_expire(client, queue)
            raise Empty()

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            return super().basic_get(queue, no_ack, **kwargs)
        except _Unreadable as exc:
            self._drop(describe_item(exc.reason, queue, dumps(exc.payload)))
            return None

    def _deliver_fanout_message(self, message: Any, exchange: str) -> bool:
        try:
            return bool(super()._deliver_fanout_message(message, exchange))
        except _Unreadable as exc:
            queue = self._fanout_to_queue.get(exchange, exchange)
            self._drop(describe_item(exc.reason, queue, dumps(exc.payload)))
            return False

    def _do_restore_message(
        self, payload: Any, exchange: str, routing_key: str, pipe: Any, leftmost: bool = False
    ) -> None:
        # kombu's own logs the whole payload when it cannot restore one; this one says why.
        try:
            try:
                payload["headers"]["redelivered"] = True
                payload["properties"]["delivery_info"]["redelivered"] = True
            except KeyError:
                pass
            push = pipe.lpush if leftmost else pipe.rpush
            for queue in self._lookup(exchange, routing_key):
                pri = self._get_message_priority(payload, reverse=False)
                push(self._q_for_pri(queue, pri), dumps(payload))
        except self.connection_errors:
            # Abort the transaction: it would otherwise remove the message from the unacked
            # hash without requeueing it.
            raise
        except Exception as exc:  # an unrestorable entry: drop it, say why, go on
            reason = f"unacked message not restorable ({type(exc).__name__})"
            self._drop(DeadLetter(reason=reason, queue=clip(routing_key), size_bytes=0))


class Transport(kombu_redis.Transport):
    """The Redis transport with the guarded channel."""

    Channel = GuardedChannel
