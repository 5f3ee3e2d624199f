"""Child runs started by a subagent (``ctx.spawn / ctx.gather / ctx.race``): the worker's side.

Submitting a run is the application side's job (``orchestrator/api``: the catalog check,
admission, the send), and this layer must not import it. So a subagent's context asks a
:class:`Launcher`, which the worker finds by name the first time a subagent starts a child
(:data:`LAUNCHER`, as Celery finds its pool class by name): the one place the lower layer
names the upper one, and only at run time.

A subagent's children never outlive it: :meth:`Children.close` stops those still going when
the subagent ends, however it ends (returned, failed, cancelled, lost its race). A child run
also stops when its parent *run* ends (``workers.ending.stop_children``).
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

from workers.models import Pattern, RunParent, RunProgress, RunResult
from workers.settings import Settings

__all__ = ["LAUNCHER", "ChildRun", "Children", "Launcher", "Origin", "launcher_for"]

log = logging.getLogger(__name__)

#: ``module:attribute`` of the launcher class (the application side's run submission).
LAUNCHER = "orchestrator.api.children:Launcher"


class ChildRun(Protocol):
    """What ``ctx.spawn/gather/race`` return: a run handle (``orchestrator.Run``)."""

    id: str

    def wait(self, timeout_s: float | None = None) -> RunResult: ...

    async def wait_async(self, timeout_s: float | None = None) -> RunResult: ...

    def cancel(self, reason: str = ...) -> RunResult: ...

    def status(self) -> RunProgress: ...

    def result(self) -> RunResult | None: ...


@dataclass
class Origin:
    """The subagent that starts child runs, as its children see it."""

    #: What each child records as its parent (this subagent, its run, the tree's root).
    parent: RunParent
    deadline_at: float
    is_async: bool
    #: The worker's hostname (a sync subagent waiting holds a slot there).
    worker: str
    settings: Settings
    #: Async subagents: frees this subagent's in-flight place while it awaits a child.
    lend: Callable[[], AbstractAsyncContextManager[None]] | None = None


class Launcher(Protocol):
    """Submits child runs (one per worker process)."""

    def __init__(self, settings: Settings) -> None: ...

    def submit(
        self, origin: Origin, pattern: Pattern, tasks: Sequence[Any], options: dict[str, Any]
    ) -> ChildRun: ...

    def stop(self, run_id: str, reason: str) -> None: ...


_launchers: dict[int, Launcher] = {}
_lock = threading.Lock()


def launcher_for(settings: Settings) -> Launcher:
    """The process's launcher for these settings (made on first use, after fork)."""
    key = id(settings)
    with _lock:
        found = _launchers.get(key)
        if found is None:
            module, _, name = LAUNCHER.partition(":")
            cls = getattr(importlib.import_module(module), name)
            found = _launchers[key] = cls(settings)
        return found


@dataclass
class Children:
    """One subagent's child runs (its origin is made on the first one: most subagents start
    none, and a hot path pays nothing for the feature)."""

    make_origin: Callable[[], Origin]
    started: list[ChildRun] = field(default_factory=list)
    _origin: Origin | None = None

    @property
    def origin(self) -> Origin:
        if self._origin is None:
            self._origin = self.make_origin()
        return self._origin

    def start(self, pattern: Pattern, tasks: Sequence[Any], options: dict[str, Any]) -> ChildRun:
        """Submit a child run (errors as the application side raises them)."""
        run = launcher_for(self.origin.settings).submit(self.origin, pattern, tasks, options)
        self.started.append(run)
        return run

    def close(self, reason: str) -> None:
        """Stop every child run still going (the subagent that started it has ended)."""
        if not self.started:
            return
        launcher = launcher_for(self.origin.settings)
        for run in self.started:
            try:
                launcher.stop(run.id, reason)
            except Exception as exc:  # the others must still be stopped
                log.warning("could not stop child run %s: %s", run.id, exc)
