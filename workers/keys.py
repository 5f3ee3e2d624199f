"""Every Redis key and channel this project uses, built in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    """Key builder under a configurable prefix."""

    prefix: str

    @property
    def catalog(self) -> str:
        """Hash: agent/merger/validator name -> CatalogEntry JSON."""
        return f"{self.prefix}:catalog"

    @property
    def workers(self) -> str:
        """Hash: worker hostname -> WorkerInfo JSON (heartbeat)."""
        return f"{self.prefix}:workers"

    @property
    def runs(self) -> str:
        """Sorted set of recent run ids by creation time (trimmed)."""
        return f"{self.prefix}:runs"

    @property
    def deadlines(self) -> str:
        """Sorted set: open run id -> deadline (epoch s); coordinators sweep it."""
        return f"{self.prefix}:deadlines"

    @property
    def cancel_channel(self) -> str:
        """Pub/sub channel of cancel messages, one listener per worker process."""
        return f"{self.prefix}:cancel"

    @property
    def stats_counts(self) -> str:
        """Hash: stats list key -> samples ever recorded into it (TTL'd with the lists)."""
        return f"{self.prefix}:stats:counts"

    def stats(self, series: str) -> str:
        """List: recent duration samples of one series ('agent:<name>', 'merger:<name>',
        'validator:<name>', 'pattern:<pattern>'), newest first, capped and TTL'd."""
        return f"{self.prefix}:stats:{series}"

    def waker(self, token: str) -> str:
        """Stream (1 entry, TTL'd): wakes one asyncio client's blocked XREAD when it waits on
        one more run (orchestrator/aio.py)."""
        return f"{self.prefix}:aio:{token}:wake"

    def run(self, run_id: str) -> str:
        """Hash: the run record."""
        return f"{self.prefix}:run:{run_id}"

    def results(self, run_id: str) -> str:
        """Hash: subtask index -> AgentResult JSON (first terminal envelope wins)."""
        return f"{self.prefix}:run:{run_id}:results"

    def attempts(self, run_id: str) -> str:
        """Hash: subtask index -> number of starts."""
        return f"{self.prefix}:run:{run_id}:attempts"

    def started_by(self, run_id: str) -> str:
        """Hash: subtask index -> worker that last started it."""
        return f"{self.prefix}:run:{run_id}:started_by"

    def payloads(self, run_id: str) -> str:
        """Hash: subtask index -> payload JSON, kept while the run is open to resend subtasks of
        a lost worker."""
        return f"{self.prefix}:run:{run_id}:payloads"

    def resent(self, run_id: str) -> str:
        """Hash: subtask index -> the lost worker it was resent for."""
        return f"{self.prefix}:run:{run_id}:resent"

    def events(self, run_id: str) -> str:
        """Stream of the run's events (capped)."""
        return f"{self.prefix}:run:{run_id}:events"

    def winner(self, run_id: str) -> str:
        """String: index of the race winner (SET NX)."""
        return f"{self.prefix}:run:{run_id}:winner"

    def cancel(self, run_id: str) -> str:
        """String: why the whole run was cancelled."""
        return f"{self.prefix}:run:{run_id}:cancel"

    def task_cancel(self, run_id: str) -> str:
        """Hash: subtask index -> why that subtask was cancelled."""
        return f"{self.prefix}:run:{run_id}:task_cancel"

    def result(self, run_id: str) -> str:
        """String: the final RunResult JSON (SET NX: one finaliser wins)."""
        return f"{self.prefix}:run:{run_id}:result"

    def done(self, run_id: str) -> str:
        """Stream with one entry once the run has finished; waiters block on it."""
        return f"{self.prefix}:run:{run_id}:done"

    def run_keys(self, run_id: str) -> list[str]:
        """Every key of one run (for TTLs and clean-up)."""
        return [
            self.run(run_id),
            self.results(run_id),
            self.attempts(run_id),
            self.started_by(run_id),
            self.payloads(run_id),
            self.resent(run_id),
            self.events(run_id),
            self.winner(run_id),
            self.cancel(run_id),
            self.task_cancel(run_id),
            self.result(run_id),
            self.done(run_id),
        ]
