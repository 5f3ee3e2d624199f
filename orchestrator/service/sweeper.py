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
        if store.has_ended(run_id) or not store.run_exists(run_id):
            store.forget_deadline(run_id)
    return ended


class DeadlineSweeper:
    """Ends overdue runs and recovers lost workers' subtasks, every ``interval_s``."""

    def __init__(self, coord: Coordinator, interval_s: float = 0.25) -> None:
        self.coord = coord
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orch-deadlines", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _loop(self) -> None:
        rounds = 0
        while not self._stop.wait(self.interval_s):
            rounds += 1
            try:
                sweep(self.coord)
                if rounds % RECOVER_EVERY == 0:
                    coord = self.coord
                    coord.resume_stalled()
                    recover(coord.app, coord.store, coord.catalog, coord.settings.lost_worker_s)
            except Exception as exc:  # Redis away: the next round tries again
                log.warning("deadline sweep failed: %s", exc)


def sweeper_step(coord: Coordinator) -> type[bootsteps.StartStopStep]:
    """A worker bootstep running the DeadlineSweeper while the coordinator runs."""

    class Sweeper(bootsteps.StartStopStep):  # type: ignore[misc]
        def __init__(self, worker: Any, **kwargs: Any) -> None:
            super().__init__(worker, **kwargs)
            self.sweeper = DeadlineSweeper(coord)

        def start(self, worker: Any) -> None:
            self.sweeper.start()

        def stop(self, worker: Any) -> None:
            self.sweeper.stop()

    return Sweeper
