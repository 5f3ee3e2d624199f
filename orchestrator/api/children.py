"""Child runs submitted from inside a worker (``ctx.spawn / ctx.gather / ctx.race``): the
launcher the worker finds by name (``workers.children.LAUNCHER``), and the run handle a
subagent waits on.

Waiting must not deadlock the fleet. An async subagent that awaits its child lends its
in-flight place and a message of prefetch to others meanwhile (``Services.lend_slot``). A sync
subagent cannot: it sits in its worker slot. So before it waits, it says so (a fleet-wide
hash of waiting parents, renewed while it waits) and counts the slots that serve its child's
sync agents; if waiting parents hold all of them, waiting would hang until the deadline, and
it raises :class:`WouldDeadlock` saying what to do instead.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from orchestrator.api.client import Orchestrator
from orchestrator.api.runs import Run
from orchestrator.request import Task, TaskSpec
from workers import ending
from workers.agent_loop import on_a_loop
from workers.children import Origin
from workers.errors import InvalidRequest, RunTimedOut, WouldDeadlock
from workers.models import AgentKind, Pattern, RunResult
from workers.settings import Settings

__all__ = ["ChildRunHandle", "Launcher"]

#: A child needs some time of its own: a parent with less left than this starts none.
MIN_CHILD_S = 0.05


class Launcher:
    """Submits the child runs of one worker process's subagents (``workers.children``)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._orch: Orchestrator | None = None

    @property
    def orch(self) -> Orchestrator:
        """The process's client (made on first use, after fork)."""
        if self._orch is None:
            self._orch = Orchestrator(self.settings)
        return self._orch

    def submit(
        self, origin: Origin, pattern: Pattern, tasks: Sequence[Any], options: dict[str, Any]
    ) -> ChildRunHandle:
        """Submit a child run under ``origin``: its deadline at most the parent's remaining
        time, and the record naming its parent, root and ancestors."""
        remaining_s = origin.deadline_at - time.time()
        if remaining_s < MIN_CHILD_S:
            raise InvalidRequest(
                f"run {origin.parent.run_id} has {max(remaining_s, 0.0):.2f}s left before its "
                "deadline: too little to start a child run"
            )
        opts = dict(options)
        asked_s = opts.get("deadline_s") or self.settings.default_deadline_s
        opts["deadline_s"] = min(float(asked_s), remaining_s)
        orch = self.orch
        req = orch.request(pattern, [_task(t) for t in tasks], **opts)
        req.parent = origin.parent
        orch.submit(req)
        return ChildRunHandle(orch, req.run_id, origin, [t.agent for t in req.tasks])

    def stop(self, run_id: str, reason: str) -> None:
        """Cancel a child run unless it has ended."""
        store = self.orch.store
        if not store.has_ended(run_id):
            ending.cancel(store, self.orch.revoke, run_id, reason)


def _task(t: Any) -> Task:
    if isinstance(t, Task):
        return t
    if isinstance(t, TaskSpec):  # the lower layer's form (the built-in router sends these)
        return Task(t.agent, t.payload, secret=t.secret)
    raise InvalidRequest(f"child run tasks must be Task objects; got {type(t).__name__}")


class ChildRunHandle(Run):
    """A child run's handle, as its parent subagent holds it: waiting lends the parent's
    place to others (async), or refuses a wait that could only deadlock (sync)."""

    def __init__(self, host: Any, run_id: str, origin: Origin, agents: list[str]) -> None:
        super().__init__(host, run_id)
        self.client = host  # the Orchestrator (a RunHost with a catalog and the fleet's view)
        self.origin = origin
        self.agents = agents

    async def wait_async(self, timeout_s: float | None = None) -> RunResult:
        lend = self.origin.lend
        if lend is None:  # a sync agent calling into asyncio: nothing of ours to lend
            return await super().wait_async(timeout_s)
        async with lend():
            return await super().wait_async(timeout_s)

    def wait(self, timeout_s: float | None = None) -> RunResult:
        if self.origin.is_async and on_a_loop():
            raise InvalidRequest(
                f"agent {self.origin.parent.agent!r} is async def: `await run.wait_async()` "
                "for child run results (a blocking wait would stop the event loop its "
                "children may need)"
            )
        if self.origin.is_async:
            return super().wait(timeout_s)
        return self._wait_in_slot(timeout_s)

    def _wait_in_slot(self, timeout_s: float | None) -> RunResult:
        store = self.orch.store
        ttl_s = self.orch.settings.tree.waiting_parent_ttl_s
        holder = f"{self.origin.worker}|{self.origin.parent.task_id}"
        store.hold_waiting(holder, ttl_s)
        try:
            self._refuse_deadlock(holder)
            limit = time.monotonic() + timeout_s if timeout_s is not None else float("inf")
            while True:
                step = min(ttl_s / 3, max(limit - time.monotonic(), 0.0))
                try:
                    return super().wait(step)
                except RunTimedOut:
                    if time.monotonic() >= limit:
                        raise
                    store.hold_waiting(holder, ttl_s)
        finally:
            store.release_waiting(holder)

    def _refuse_deadlock(self, holder: str) -> None:
        """WouldDeadlock when every slot serving the child's sync agents is held by a waiting
        parent (this one included, if its worker serves them)."""
        orch = self.client
        entries = [orch.catalog.get(AgentKind.AGENT, a) for a in set(self.agents)]
        sync = [e for e in entries if not e.is_async]
        if not sync:
            return  # async children run on the loop, not in the slots
        queues = {e.queue for e in sync}
        serving = [
            w for w in orch.live_processes() if w.role == "worker" and queues & set(w.queues)
        ]
        slots = sum(w.concurrency for w in serving)
        waiting = orch.store.waiting_by_host()
        held = sum(waiting.get(w.hostname, 0) for w in serving)
        if not serving or held < slots:
            return  # no worker yet: the child waits for one as any run does
        names = sorted(e.name for e in sync)
        origin = self.origin.parent
        raise WouldDeadlock(
            f"sync agent {origin.agent!r} (run {origin.run_id} #{origin.index}) cannot wait for "
            f"child run {self.id}: its sync agents {names} run on {slots} worker slots, and "
            f"{held} of them are held by subagents waiting for child runs (this one "
            "included), so it would hang until its deadline. Make the parent agent `async "
            "def` (an awaiting async agent holds no slot), serve the child agents from workers "
            "of their own (@agent(queue=...)), or add worker slots (--concurrency)",
            agents=names,
            slots=slots,
            waiting=held,
        )
