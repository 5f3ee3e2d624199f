"""The seam every pattern plugs into: one :class:`PatternSpec` per pattern, registered in
``workers/patterns/__init__.py``. Nothing outside this package branches on a pattern.

A pattern says how its members are built and sent, what its run does when every member has
reported (its completion rule), whether lost-worker recovery may resend its members, how its
progress is counted, and the part of the cost model that differs between patterns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from celery import Celery, chain
from celery.canvas import Signature

from workers import ending
from workers.models import AgentKind, CatalogEntry, Pattern, RunStatus, TaskMeta
from workers.patterns.members import (
    LazySignatures,
    agent_signature,
    member_signatures,
    send_members,
)

if TYPE_CHECKING:
    from workers.request import OrchestrationRequest
    from workers.store import RunStore


def refuse_gather_options(req: OrchestrationRequest) -> None:
    """ValueError when a request of another pattern names a gather's options."""
    if req.merge or req.quorum or req.early:
        raise ValueError("merge, quorum and early apply only to gather-then-merge")


def refuse_race_options(req: OrchestrationRequest) -> None:
    """ValueError when a request of another pattern names a race's options."""
    if req.validate_with or req.hedge_after_s is not None or req.hedge is not None:
        raise ValueError("validate, hedge_after_s and hedge apply only to race-then-cancel")


@dataclass(frozen=True)
class Expansion:
    """A request ready to run: its members (sent message by message under one group id, or a
    chain when run one after another) and the meta every subtask gets.

    ``merger``: the merger's signature, which the member whose envelope completes a gather
    sends (see :mod:`workers.patterns.gather`).
    """

    meta: TaskMeta
    members: Sequence[Signature] | None = None
    chain: Signature | None = None
    merger: Signature | None = None

    @property
    def batches(self) -> list[list[int]] | None:
        """The subtask indices of each batch message, when batched."""
        return self.members.chunks if isinstance(self.members, LazySignatures) else None

    def send(
        self,
        app: Celery,
        group_id: str,
        *,
        start: int = 0,
        on_flush: Callable[[int], None] | None = None,
    ) -> None:
        """Publish the expansion (from member ``start`` on; see :func:`send_members`)."""
        if self.members is None:
            assert self.chain is not None
            self.chain.apply_async()  # only its first link is sent now
            return
        send_members(app, self.members, group_id, start=start, on_flush=on_flush)


@dataclass(frozen=True)
class Completion:
    """What a pattern's completion rule may use, in the worker that recorded an envelope."""

    store: RunStore
    run_id: str
    #: Sends a message stored on the run record (a gather's merger).
    send: Callable[[str], None]
    #: Best-effort Celery revoke of task ids (an early quorum's stragglers).
    revoke: ending.Revoke = ending.no_revoke


@dataclass(frozen=True)
class Timing:
    """The predicted figures that depend on the pattern (see ``orchestrator/advisor``)."""

    parallel_s: float
    sequential_s: float
    cost_s: float


class PatternSpec:
    """One orchestration pattern. Subclass it in one module and register it."""

    pattern: ClassVar[Pattern]
    #: Subagents of one agent may share a message (``batch_size``).
    batches: ClassVar[bool] = True
    #: A valid envelope claims the run's win (SET NX) and ends it; the rest are stopped.
    claims_win: ClassVar[bool] = False
    #: Lost-worker recovery may send a started, unreported member again.
    recoverable: ClassVar[bool] = True
    #: Identical tasks (same agent and payload) are an error, not a strategy.
    duplicates_fail: ClassVar[bool] = True
    #: What the progress bar counts.
    progress_unit: ClassVar[str] = "subtasks"
    #: Shown under the report's ROI table.
    report_note: ClassVar[str | None] = None

    def check_options(self, req: OrchestrationRequest) -> None:
        """Raise ValueError when the request's options do not fit the pattern."""
        refuse_gather_options(req)
        refuse_race_options(req)

    def consumer(self, req: OrchestrationRequest) -> tuple[AgentKind, str] | None:
        """The merger or validator that reads the members' outputs, if any."""
        return None

    def record_fields(self, req: OrchestrationRequest) -> dict[str, str]:
        """The pattern's own fields of a new run record (a hedge, an early quorum)."""
        return {}

    def after_members(
        self,
        app: Celery,
        req: OrchestrationRequest,
        merger: CatalogEntry | None,
        meta: TaskMeta,
        note: str = "",
    ) -> Signature | None:
        """What runs once every member has reported (a gather's merger), if anything."""
        return None

    def expand(
        self,
        app: Celery,
        req: OrchestrationRequest,
        entries: list[CatalogEntry],
        merger: CatalogEntry | None,
        meta: TaskMeta,
    ) -> Expansion:
        """The members, sent in parallel, and what runs after them."""
        members = member_signatures(app, req, entries, meta, batches=self.batches)
        return Expansion(
            meta=meta, members=members, merger=self.after_members(app, req, merger, meta)
        )

    def expand_sequential(
        self,
        app: Celery,
        req: OrchestrationRequest,
        entries: list[CatalogEntry],
        merger: CatalogEntry | None,
        meta: TaskMeta,
    ) -> Expansion:
        """Every member one after another (a Celery chain: pre-flight policy 'auto'), then what
        runs after them.

        Every link is immutable and the subtasks are the same agent tasks with the same meta,
        so the results keep their meaning: the completion rule still ends the run.
        """
        links = [
            agent_signature(app, req, i, entries[i], meta).set(immutable=True)
            for i in range(len(req.tasks))
        ]
        after = self.after_members(app, req, merger, meta, note=" sequential")
        if after is not None:
            # In a chain nothing fills its first argument (which it ignores): pass None.
            links.append(after.clone(args=(None,)).set(immutable=True))
        return Expansion(meta=meta, chain=chain(*links, app=app))

    def on_all_reported(self, done: Completion) -> None:
        """The completion rule: every member has reported (and, for a race, none won)."""
        raise NotImplementedError

    def on_reported_again(self, done: Completion) -> None:
        """A member was delivered again after its envelope was recorded."""

    def on_quorum(self, done: Completion, n: int) -> None:
        """An early quorum was reached (finish.lua says so to exactly one envelope)."""

    def on_budget(self, done: Completion) -> None:
        """The run's spend crossed its budget and everything left was stopped: end it with
        what finished (``ending`` honours the recorded budget_exceeded ending)."""
        ending.finish(done.store, done.run_id, RunStatus.BUDGET_EXCEEDED)

    def progress(self, done: int, n: int, *, merged: bool, decided: bool) -> tuple[int, int]:
        """(steps done, steps in all) for the progress bar."""
        return done, n

    def timing(
        self,
        durations: Sequence[float],
        starts: Sequence[float],
        ends: Sequence[float],
        ok_rates: Sequence[float],
        *,
        merge_mean_s: float,
        merge_wall_s: float,
    ) -> Timing:
        """Predicted wall time in parallel (from the schedule's ``starts`` and ``ends``), one
        after another, and the work paid for. ``merge_mean_s``: the merger's mean run time;
        ``merge_wall_s``: that plus its dispatch latency (both 0 without a merger)."""
        return Timing(
            parallel_s=max(ends) + merge_wall_s,
            sequential_s=sum(durations) + merge_mean_s,
            cost_s=sum(durations) + merge_mean_s,
        )

    def marginal_speedup_fails(self) -> bool:
        """A speedup below the advisor's 'marginal' threshold fails the cost check."""
        return False
