"""Dropping what a process cannot understand: one redacted log line and one dead-letter entry.

Anything any broker client pushes onto our queues is input. An item the guarded Redis transport
(``workers/transport.py``) cannot read, or a message the guarded consumer (``workers/guard.py``)
will not run, is handed to the app's :class:`DeadLetterSink`: it logs the drop once, without
the payload, writes a bounded description through the store, and the process goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import threading
import time
import uuid
import weakref
from typing import Any

from workers import ending
from workers.names import COORDINATOR_TASK, run_of_coordinator_id
from workers.settings import Settings
from workers.store import DeadLetter, RunStore, make_store

logger = logging.getLogger("workers.dead_letters")

#: Bytes of a non-JSON item kept in its entry (the log line never shows any).
HEAD_BYTES = 32
#: Longest reason, task name or task id kept (they come from the sender).
FIELD_CHARS = 120
#: Retries of the sink's Redis client: a drop is not worth stalling the consumer for.
SINK_RETRIES = 2

#: Transport option naming the sink of the app whose connection a channel belongs to.
SINK_OPTION = "orch_dead_letter_sink"
_SINKS: weakref.WeakValueDictionary[str, DeadLetterSink] = weakref.WeakValueDictionary()


def clip(value: object, limit: int = FIELD_CHARS) -> str:
    """A sender-supplied value as a short printable string."""
    text = value if isinstance(value, str) else repr(value)
    text = text.encode("ascii", "backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_item(reason: str, queue: str, item: bytes | str) -> DeadLetter:
    """A raw broker item: its size, and its first bytes only when it is not JSON."""
    raw = item.encode("utf-8", "surrogateescape") if isinstance(item, str) else item
    looks_json = raw.lstrip()[:1] in (b"{", b"[", b'"')
    head = "" if looks_json else clip(raw[:HEAD_BYTES].decode("utf-8", "replace"), HEAD_BYTES * 4)
    return DeadLetter(reason=clip(reason), queue=clip(queue), size_bytes=len(raw), head=head)


def describe_message(reason: str, message: Any) -> DeadLetter:
    """A decoded kombu message: its queue, body size, task name and id (never the body)."""
    headers = message.headers if isinstance(message.headers, dict) else {}
    info = message.delivery_info if isinstance(message.delivery_info, dict) else {}
    body = message.body
    task, task_id = headers.get("task"), headers.get("id")
    return DeadLetter(
        reason=clip(reason),
        queue=clip(info.get("routing_key") or info.get("exchange") or "?"),
        size_bytes=len(body) if isinstance(body, bytes | str) else 0,
        task="" if task is None else clip(task),
        task_id="" if task_id is None else clip(task_id),
    )


class DeadLetterSink:
    """Where one app's processes drop what they cannot understand."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.host = socket.gethostname()
        #: Named in the broker's transport options, so a channel finds its app's sink.
        self.token = uuid.uuid4().hex
        self._store: RunStore | None = None
        self._lock = threading.Lock()
        _SINKS[self.token] = self

    def drop(self, letter: DeadLetter) -> None:
        """Log the drop once (no payload) and keep its description; never raises."""
        letter = dataclasses.replace(letter, host=self.host, at=time.time())
        named = letter.task or letter.task_id
        task = f", task {letter.task!r} id {letter.task_id!r}" if named else ""
        logger.warning(
            "dropped an item from queue %r to the dead-letter list: %s (%d bytes%s)",
            letter.queue,
            letter.reason,
            letter.size_bytes,
            task,
        )
        try:
            self.store().add_dead_letter(letter)
            run_id = run_of_coordinator_id(letter.task_id or "")
            if letter.task == COORDINATOR_TASK and run_id is not None:
                # A run request nobody can read (too deep to decode, say): end its run, if no
                # client recorded it, rather than leave its waiters to wait.
                reason = f"the orchestration request could not be accepted: {letter.reason}"
                ending.fail_unrecorded(self.store(), run_id, reason)
        except Exception as exc:  # bookkeeping must not take the consumer down
            logger.error("could not record the dead letter: %s", clip(exc))

    def store(self) -> RunStore:
        """The store, made on the first drop (most processes never drop anything)."""
        with self._lock:
            if self._store is None:
                self._store = make_store(self.settings, retries=SINK_RETRIES)
            return self._store


def sink_for(transport_options: dict[str, Any] | None) -> DeadLetterSink | None:
    """The sink a connection's transport options name (None: a connection of no app of ours)."""
    token = (transport_options or {}).get(SINK_OPTION)
    return _SINKS.get(token) if isinstance(token, str) else None


def log_only(letter: DeadLetter) -> None:
    """Drop without a sink (a connection made outside our app factory): the log line only."""
    logger.warning(
        "dropped an item from queue %r: %s (%d bytes)",
        letter.queue,
        letter.reason,
        letter.size_bytes,
    )
