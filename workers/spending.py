"""How a subagent's running spend reaches the run's ledger, and what a crossed budget does:
stop everything still queued or running, then end the run as its pattern says."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from workers import ending
from workers.ledger import SpendDelta, SpendMeter
from workers.models import Pattern, TaskMeta
from workers.patterns import pattern_of
from workers.services import Services

__all__ = ["budget_crossed", "spend_flusher", "tree_spend"]

log = logging.getLogger(__name__)


def spend_flusher(
    services: Services, run_id: str, meta: TaskMeta, meter: SpendMeter
) -> Callable[[SpendDelta], None]:
    """How a subagent's running spend reaches the run's ledger: one round trip from a sync
    agent's thread; a background task from an async one (the loop never waits for it; the
    envelope waits for what is still in flight)."""

    def flush(delta: SpendDelta) -> None:
        if services.loop is not None and services.loop.in_loop:
            task = asyncio.get_running_loop().create_task(
                _flush_async(services, run_id, meta, meter, delta)
            )
            meter.inflight.add(task)
            task.add_done_callback(meter.inflight.discard)
            return
        try:
            crossed = services.store.add_spend(run_id, delta)
        except Exception as exc:  # the ledger gets it with the next flush, or the envelope
            meter.give_back(delta)
            log.warning("run %s: spend not recorded yet (%s); it goes with the next", run_id, exc)
            return
        if crossed:
            # Not on this thread: the stop interrupts this very agent (it is in flight), and
            # the interrupt must not land inside the stop itself.
            threading.Thread(
                target=budget_crossed, args=(services, run_id, meta), name="orch-budget"
            ).start()
        if meta.ancestors:
            tree_spend(services, meta, delta)

    return flush


async def _flush_async(
    services: Services, run_id: str, meta: TaskMeta, meter: SpendMeter, delta: SpendDelta
) -> None:
    try:
        crossed = await services.aio().add_spend(run_id, delta)
    except Exception as exc:  # as above
        meter.give_back(delta)
        log.warning("run %s: spend not recorded yet (%s); it goes with the next", run_id, exc)
        return
    if crossed:
        await asyncio.to_thread(budget_crossed, services, run_id, meta)
    if meta.ancestors:
        await asyncio.to_thread(tree_spend, services, meta, delta)


def tree_spend(services: Services, meta: TaskMeta, delta: SpendDelta) -> None:
    """A child run's spend toward every ancestor's budget; an ancestor it takes over its
    budget is stopped (in a thread, as above: the stop reaches this agent too)."""
    try:
        crossed = services.store.add_tree_spend(meta.ancestors, delta)
    except Exception as exc:  # the child's own ledger has it; only the ancestors' check waits
        log.warning("spend not counted toward runs %s yet: %s", meta.ancestors, exc)
        return
    for run_id in crossed:
        threading.Thread(
            target=_ancestor_over_budget, args=(services, run_id), name="orch-budget"
        ).start()


def _ancestor_over_budget(services: Services, run_id: str) -> None:
    try:
        pattern = services.store.run_fields(run_id, ["pattern"])[0] or ""
        ending.over_budget(services.store, services.revoke, run_id)
        pattern_of(Pattern(pattern)).on_budget(services.completion(run_id))
    except Exception as exc:  # e.g. the run ended meanwhile
        log.warning("run %s: over budget, but could not be stopped: %s", run_id, exc)


def budget_crossed(services: Services, run_id: str, meta: TaskMeta) -> None:
    """The run's spend crossed its budget (this process saw it first): stop everything still
    queued or running, then end the run as the pattern says (a gather may still merge)."""
    ending.over_budget(services.store, services.revoke, run_id)
    pattern_of(meta.pattern).on_budget(services.completion(run_id))
