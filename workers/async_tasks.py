"""The messages of ``async def`` agents and mergers, run on the worker process's event loop
instead of a pool slot: many in flight per process, however many slots the pool has.

Celery's tracer is synchronous: it holds a pool slot (a process, or a thread) until the task
returns. For an async agent the pool (``workers/pools.py``) hands the message here instead;
this module decodes it as the tracer would, awaits the handler (``workers/runtime_async.py``),
and calls the very callbacks the pool would have called (``on_accepted``, ``on_success``), so
the worker acknowledges the message after the envelope is recorded (acks late), Flower sees
task-started / task-succeeded / task-failed / task-revoked as for any task, and ``inspect
active`` lists it. Those callbacks do blocking I/O (the ack, the events), so one thread of
their own runs them, in order, off the event loop.

Two Celery features of the tracer do not apply here: its signals (task_prerun and friends) and
its result-backend write (our subagent messages are sent with ignore_result: the envelope is
the result).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from billiard.einfo import ExceptionInfo, ExceptionWithTraceback
from celery import Celery, Task
from celery.app.task import Context
from celery.exceptions import Ignore, Reject
from celery.utils.saferepr import saferepr
from kombu.serialization import loads, prepare_accept_content

from workers.agent_loop import AgentLoop

__all__ = ["AsyncTasks", "Handler", "MessageTask", "in_loop"]
from workers.errors import BrokerUnavailable, SubagentFailed

log = logging.getLogger(__name__)

#: An async task's body: (the task as its handler sees it, args, kwargs) -> the Celery result.
Handler = Callable[["MessageTask", list[Any], dict[str, Any]], Awaitable[Any]]


class MessageTask:
    """What a handler gets in place of a bound Celery task: the app, the message's request
    (id, hostname, chain), and send_event."""

    def __init__(self, task: Task, request: Context) -> None:
        self.app = task.app
        self.name = task.name
        self.request = request

    def send_event(self, type_: str, **fields: Any) -> None:
        """Send a task event about this message (as ``Task.send_event`` does)."""
        with self.app.events.default_dispatcher(hostname=self.request.hostname) as dispatcher:
            dispatcher.send(type_, uuid=self.request.id, **fields)


class AsyncTasks:
    """The async agents' and mergers' handlers of one app, and the runner of their messages."""

    def __init__(self, app: Celery, loop_of: Callable[[], AgentLoop]) -> None:
        self.app = app
        self.handlers: dict[str, Handler] = {}
        #: The process's event loop (built with the process's services, after fork).
        self._loop_of = loop_of
        self._pid = -1
        self._callbacks: concurrent.futures.ThreadPoolExecutor | None = None
        self._accept: list[str] | None = None

    def add(self, name: str, handler: Handler) -> None:
        """Register the handler of task ``name``."""
        self.handlers[name] = handler

    def handles(self, name: object) -> bool:
        """Whether the message of task ``name`` runs here rather than in a pool slot."""
        return name in self.handlers

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._callbacks is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._callbacks = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="orch-celery-callbacks"
            )
        return self._callbacks

    def apply(
        self,
        args: tuple[Any, ...],
        callback: Callable[[Any], Any] | None,
        accept_callback: Callable[[int, float], Any] | None,
    ) -> concurrent.futures.Future[None]:
        """Run one message (the tracer's arguments: name, id, request, body, content type and
        encoding) on the event loop; returns at once."""
        return self._loop_of().submit(self._run(args, callback, accept_callback))

    async def _run(
        self,
        args: tuple[Any, ...],
        callback: Callable[[Any], Any] | None,
        accept_callback: Callable[[int, float], Any] | None,
    ) -> None:
        name, task_id, request_dict, body, content_type, content_encoding = args[:6]
        calls = self._executor()
        if accept_callback is not None:
            calls.submit(accept_callback, os.getpid(), time.monotonic())
        started = time.monotonic()
        try:
            task = self.app.tasks[name]
            call, request = self._decode(request_dict, body, content_type, content_encoding)
            result = await self.handlers[name](MessageTask(task, request), *call)
        except (SubagentFailed, Ignore) as exc:
            outcome: tuple[int, Any, float] = (1, _einfo_now(), time.monotonic() - started)
            log.info("Task %s[%s] %s", name, task_id, _said(exc))
        except BrokerUnavailable as exc:
            # The state Redis stayed away through every retry: the message goes back to its
            # queue (the envelope is recorded once, so running it again is safe).
            log.warning("Task %s[%s]: %s; requeued", name, task_id, exc)
            outcome = (1, _einfo(Reject(str(exc), requeue=True)), time.monotonic() - started)
        except Exception as exc:
            log.exception("Task %s[%s] raised unexpected: %r", name, task_id, exc)
            outcome = (1, _einfo_now(), time.monotonic() - started)
        else:
            runtime_s = time.monotonic() - started
            log.info("Task %s[%s] succeeded in %.3fs", name, task_id, runtime_s)
            outcome = (0, saferepr(result, 1024), runtime_s)
        if callback is not None:
            calls.submit(_call_logged, callback, outcome)

    def _decode(
        self, request_dict: dict[str, Any], body: Any, content_type: str, content_encoding: str
    ) -> tuple[tuple[list[Any], dict[str, Any]], Context]:
        if self._accept is None:
            self._accept = prepare_accept_content(self.app.conf.accept_content)  # type: ignore[no-untyped-call]
        if content_type:
            args, kwargs, embed = loads(  # type: ignore[no-untyped-call]
                body, content_type, content_encoding, accept=self._accept
            )
        else:
            args, kwargs, embed = body
        request = dict(request_dict)
        request.update({"args": args, "kwargs": kwargs, "is_eager": False}, **(embed or {}))
        request.setdefault("hostname", socket.gethostname())
        return (list(args), dict(kwargs)), Context(request)


def _said(exc: BaseException) -> str:
    if isinstance(exc, Ignore):
        return "stopped (cancelled or skipped)"
    return f"raised expected: {type(exc).__name__}: {exc}"


def _einfo(exc: BaseException) -> ExceptionInfo:
    try:
        raise exc
    except BaseException:
        return _einfo_now()


def _einfo_now() -> ExceptionInfo:
    """The exception being handled, as Celery's tracer hands it to the request: unwrapped
    from billiard's ExceptionWithTraceback, so task-failed events (and Flower) show the error
    itself, not the wrapper."""
    einfo = ExceptionInfo()
    if isinstance(einfo.exception, ExceptionWithTraceback):
        einfo.exception = einfo.exception.exc
    return einfo


def _call_logged(callback: Callable[[Any], Any], outcome: Any) -> None:
    try:
        callback(outcome)
    except Exception as exc:  # what Celery's pool would log: the worker goes on
        log.exception("Celery callback of an async task failed: %r", exc)


def in_loop(loop: AgentLoop) -> Callable[[Awaitable[Any]], Any]:
    """For Celery's own pools (solo, threads, a prefork child): run an async task's body on
    the process's loop and wait in the slot (one slot a message: the many-in-flight needs our
    pools, ``workers/pools.py``)."""

    def wait(coro: Awaitable[Any]) -> Any:
        async def run() -> Any:
            return await coro

        return loop.run(run())

    return wait
