"""parallel-spawn: N independent subagents as one Celery group (one group id, sent message by
message, batched when asked); the last to report ends the run."""

from __future__ import annotations

from typing import ClassVar

from workers import ending
from workers.models import Pattern
from workers.patterns.base import Completion, PatternSpec


class Spawn(PatternSpec):
    """Every output collected; the run fails naming each member that did not succeed."""

    pattern: ClassVar[Pattern] = Pattern.SPAWN

    def on_all_reported(self, done: Completion) -> None:
        ending.finish_all_reported(done.store, done.run_id)


SPAWN = Spawn()
