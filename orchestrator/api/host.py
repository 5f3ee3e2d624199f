"""What a run handle needs from whoever made it: a Protocol, so that run handles and asyncio
waiting depend on this and not on the client (which imports them)."""

from __future__ import annotations

from typing import Protocol

from workers.settings import Settings
from workers.store import RunStore


class RunHost(Protocol):
    """The store to read, the settings it was built from, and a best-effort Celery revoke."""

    @property
    def settings(self) -> Settings: ...

    @property
    def store(self) -> RunStore: ...

    def revoke(self, task_ids: list[str]) -> None: ...
