"""The sweeper: a thread in each coordinator that ends overdue runs (any coordinator may) and,
every few rounds, looks for lost workers (``recovery.py``)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from celery import bootsteps

from orchestrator.service.coordinator import Coordinator
from orchestrator.service.recovery import recover
from workers import ending
from workers.errors import RunNotFound

log = logging.getLogger(__name__)

#: Sweeper rounds between looks for lost workers (every second at the default interval).
RECOVER_EVERY = 4
#: How often a sweeper records that it completed a round (what `orchestrator check` reads).
MARK_EVERY_S = 1.0


def sweep_stale_s(heartbeat_s: float) -> float:
    """A sweeper whose last completed round is older than this cannot make progress (stuck,
    frozen, or failing every round): `orchestrator check --role coordinator` fails then."""
    return max(3 * heartbeat_s, 5 * MARK_EVERY_S)


def sweep(coord: Coordinator, limit: int = 100) -> int:
    """Expire every open run whose deadline has passed; returns how many were ended."""
    store = coord.store
    ended = 0
    for run_id in store.due_runs(time.time(), limit):
        try:
            if ending.expire(store, coord.revoke, run_id) is not None:
                ended += 1
        except RunNotFound:
            pass  # its record expired: nothing left to end
        except (KeyError, ValueError) as exc:
            # A record that is not a whole run (partly rewritten after a server restart): it
            # can never be ended properly; one bad run must not stop the round for the rest.
            log.warning("run %s: record unusable (%r); dropped from the deadlines", run_id, exc)
            store.forget_deadline(run_id)
            continue
        if store.has_ended(run_id) or not store.run_exists(run_id):
            store.forget_deadline(run_id)
    return ended


class DeadlineSweeper:
    """Ends overdue runs and recovers lost workers' subtasks, every ``interval_s``."""

    def __init__(self, coord: Coordinator, interval_s: float = 0.25) -> None:
        self.coord = coord
        self.interval_s = interval_s
        self.hostname: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orch-deadlines", daemon=True)

    def start(self, hostname: str | None = None) -> None:
        """Start sweeping; with ``hostname`` (the coordinator's node name), record each
        completed round under it, so that a health check sees a sweeper that cannot run."""
        self.hostname = hostname
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        rounds = 0
        marked_at = 0.0
        while not self._stop.wait(self.interval_s):
            rounds += 1
            try:
                sweep(self.coord)
                if rounds % RECOVER_EVERY == 0:
                    coord = self.coord
                    coord.resume_stalled()
                    recover(coord.app, coord.store, coord.catalog, coord.settings.lost_worker_s)
                if self.hostname and time.monotonic() - marked_at >= MARK_EVERY_S:
                    self._mark(self.hostname)
                    marked_at = time.monotonic()
            except Exception as exc:  # Redis away: the next round tries again
                log.warning("deadline sweep failed: %s", exc)

    def _mark(self, hostname: str) -> None:
        stale_s = sweep_stale_s(self.coord.settings.heartbeat_s)
        self.coord.store.mark_swept(hostname, time.time(), keep_s=int(max(60.0, 10 * stale_s)))


def sweeper_step(coord: Coordinator) -> type[bootsteps.StartStopStep]:
    """A worker bootstep running the DeadlineSweeper while the coordinator runs."""

    class Sweeper(bootsteps.StartStopStep):  # type: ignore[misc]
        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.sweeper = DeadlineSweeper(coord)

        def start(self, worker: Any) -> None:
            self.sweeper.start(worker.hostname)

        def stop(self, worker: Any) -> None:
            self.sweeper.stop()

    return Sweeper
