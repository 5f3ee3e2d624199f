"""Every name this project puts on the wire, built in one place: Redis keys and channels (under
a configurable prefix), Celery task names, and task ids.

Task ids are deterministic (``<run>.<index>``, ``<run>.b<n>``, ``<run>.merge``,
``<run>.coordinator``) so that anyone can address a subtask of a run without a lookup: revoking,
the grace-period killer and lost-worker recovery all rely on it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# -- Celery task names -------------------------------------------------------------------------
AGENT_TASK_PREFIX = "agents."
MERGER_TASK_PREFIX = "mergers."
#: Prefix of the task that runs several subagents of one agent in one message.
BATCH_TASK_PREFIX = "batch."
#: The coordinator's task: validate, record and expand one orchestration.
COORDINATOR_TASK = "orchestrator.run"
#: The coordinator's task that ends one overdue run (kept for clients that still send it).
DEADLINE_TASK = "orchestrator.deadline"

#: Prefix of Celery's own tasks (celery.accumulate, celery.chord_unlock, ...): never run here.
BUILTIN_TASK_PREFIX = "celery."


def is_builtin_task(task_name: str) -> bool:
    """Whether a task name is one of Celery's built-in tasks (not one of ours)."""
    return task_name.startswith(BUILTIN_TASK_PREFIX)


def agent_task_name(agent: str) -> str:
    """``agents.<name>``: one Celery task per agent, so Flower shows each by its name."""
    return AGENT_TASK_PREFIX + agent


def merger_task_name(merger: str) -> str:
    """``mergers.<name>``."""
    return MERGER_TASK_PREFIX + merger


def batch_task_name(agent: str) -> str:
    """``batch.<name>``: several subagents of one agent in one message."""
    return BATCH_TASK_PREFIX + agent


def queue_of_task(task_name: str) -> tuple[str, str] | None:
    """(catalog kind, name) of one of our agent, batch or merger task names, else None: what
    the guard needs to hand a message it cannot run back to its agent's queue."""
    found = agent_of_task(task_name)
    if found is not None:
        return "agent", found[0]
    if task_name.startswith(MERGER_TASK_PREFIX):
        return "merger", task_name[len(MERGER_TASK_PREFIX) :]
    return None


# -- queue names -------------------------------------------------------------------------------
def agent_queue_name(base: str, kind: str, name: str) -> str:
    """The queue of one agent (``<base>.<name>``, e.g. ``agents.echo``) or merger
    (``<base>.merger.<name>``: an agent and a merger may share a name), when its decorator names
    none: a message then reaches only workers that have that agent."""
    return f"{base}.{name}" if kind == "agent" else f"{base}.{kind}.{name}"


# -- task ids ----------------------------------------------------------------------------------
_SUBTASK_ID = re.compile(r"^([A-Za-z0-9_-]{1,64})\.(\d+)$")
_RUN_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_BATCH_ID = re.compile(r"^([A-Za-z0-9_-]{1,64})\.b(\d+)$")


def subtask_id(run_id: str, index: int) -> str:
    """The task id of subtask ``index`` of a run."""
    return f"{run_id}.{index}"


def batch_id(run_id: str, number: int) -> str:
    """The task id of batch message ``number`` of a run."""
    return f"{run_id}.b{number}"


def merge_id(run_id: str) -> str:
    """The task id of a gather's merger."""
    return f"{run_id}.merge"


def coordinator_id(run_id: str) -> str:
    """The task id of the coordinator task of a run: the root of the run in Flower."""
    return f"{run_id}.coordinator"


def run_of_coordinator_id(task_id: str) -> str | None:
    """The run of a coordinator task id (``<run>.coordinator``), else None."""
    run_id, dot, tail = task_id.rpartition(".")
    return run_id if dot and tail == "coordinator" and _RUN_ID.match(run_id) else None


def group_id(run_id: str) -> str:
    """The Celery group id under which a run's members are sent."""
    return f"{run_id}.group"


def run_task_ids(run_id: str, n: int, batches: int = 0, *, with_merger: bool = True) -> list[str]:
    """Every task id a run of ``n`` subtasks (and ``batches`` batch messages) may have sent;
    without the merger's when it must still run (a gather over budget merges what finished)."""
    return (
        [subtask_id(run_id, i) for i in range(n)]
        + [batch_id(run_id, b) for b in range(batches)]
        + ([merge_id(run_id)] if with_merger else [])
    )


def other_subtask_ids(run_id: str, n: int, keep: int) -> list[str]:
    """The task ids of every subtask of a run but ``keep`` (a race's winner)."""
    return [subtask_id(run_id, i) for i in range(n) if i != keep]


def parse_subtask_id(task_id: str) -> tuple[str, int] | None:
    """(run id, index) of a subtask id, else None."""
    found = _SUBTASK_ID.match(task_id)
    return (found.group(1), int(found.group(2))) if found else None


def parse_batch_id(task_id: str) -> tuple[str, int] | None:
    """(run id, batch number) of a batch message's id, else None."""
    found = _BATCH_ID.match(task_id)
    return (found.group(1), int(found.group(2))) if found else None


def agent_of_task(task_name: str) -> tuple[str, bool] | None:
    """(agent name, batched?) of an agent or batch task name, else None."""
    if task_name.startswith(AGENT_TASK_PREFIX):
        return task_name[len(AGENT_TASK_PREFIX) :], False
    if task_name.startswith(BATCH_TASK_PREFIX):
        return task_name[len(BATCH_TASK_PREFIX) :], True
    return None


def catalog_field(kind: str, name: str) -> str:
    """Field of the catalog hash for one entry (``agent:<name>``, ``merger:<name>``, ...)."""
    return f"{kind}:{name}"


def indices(values: Iterable[int]) -> list[str]:
    """Hash fields of subtask indices."""
    return [str(i) for i in values]


# -- Redis keys --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Keys:
    """Key builder under a configurable prefix."""

    prefix: str

    @property
    def kombu_prefix(self) -> str:
        """What kombu and Celery's result backend put before every key they write (their
        ``global_keyprefix``): queues, bindings, unacked messages, ``celery-task-meta-*``."""
        return f"{self.prefix}:"

    def queue(self, name: str) -> str:
        """The Redis list of a broker queue (a Redis broker): ``<prefix>:<queue>``."""
        return f"{self.kombu_prefix}{name}"

    @property
    def catalog(self) -> str:
        """Hash: agent/merger/validator name -> CatalogEntry JSON."""
        return f"{self.prefix}:catalog"

    @property
    def served(self) -> str:
        """Hash: catalog field -> when a live worker that has it last beat (epoch s): the
        catalog drops an entry nobody has served for ORCH_CATALOG_STALE_S."""
        return f"{self.prefix}:catalog:served"

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

    @property
    def dead_letters(self) -> str:
        """List: what the workers and coordinators could not understand and dropped (redacted
        descriptions, newest first), capped and TTL'd."""
        return f"{self.prefix}:dead_letters"

    @property
    def dead_letters_count(self) -> str:
        """String: how many items were ever dead-lettered (the list keeps the latest only)."""
        return f"{self.prefix}:dead_letters:count"

    def stats(self, series: str) -> str:
        """List: recent duration samples of one series ('agent:<name>', 'merger:<name>',
        'validator:<name>', 'pattern:<pattern>'), newest first, capped and TTL'd."""
        return f"{self.prefix}:stats:{series}"

    def waker(self, token: str) -> str:
        """Stream (1 entry, TTL'd): wakes one asyncio client's blocked XREAD when it waits on
        one more run (orchestrator/aio.py)."""
        return f"{self.prefix}:aio:{token}:wake"

    def rate_limit(self, name: str) -> list[str]:
        """The keys of one fleet-wide rate limit (a model or a named key), in throttle.lua's
        order: the window's token sums (hash), its requests, input and output token charges
        and the concurrency leases (sorted sets); TTL'd, one hash slot per limit."""
        base = f"{self.prefix}:limit:{{{name}}}"
        return [f"{base}:{part}" for part in ("sums", "requests", "in", "out", "leases")]

    @property
    def waiting_parents(self) -> str:
        """Hash: sync subagents waiting for a child run, so holding their worker slot
        (``<hostname>|<task id>`` -> when the entry ages out, epoch s); composition's deadlock
        check counts them (workers/store/tree.py)."""
        return f"{self.prefix}:fleet:waiting-parents"

    def swept(self, hostname: str) -> str:
        """String (TTL'd): when this coordinator's sweeper last completed a round (epoch s);
        `orchestrator check --role coordinator` reads it."""
        return f"{self.prefix}:swept:{hostname}"

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

    def request(self, run_id: str) -> str:
        """String: the run's wire request (JSON), kept so that another coordinator can finish
        sending a run whose coordinator died while sending it."""
        return f"{self.prefix}:run:{run_id}:request"

    def expander(self, run_id: str) -> str:
        """String (short TTL, renewed while sending): the coordinator sending the run's
        messages."""
        return f"{self.prefix}:run:{run_id}:expander"

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
            self.request(run_id),
            self.expander(run_id),
            self.winner(run_id),
            self.cancel(run_id),
            self.task_cancel(run_id),
            self.result(run_id),
            self.done(run_id),
        ]
