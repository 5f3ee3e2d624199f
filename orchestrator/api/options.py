"""The keyword options of ``spawn``, ``gather`` and ``race`` (typed, for editors and mypy)."""

from __future__ import annotations

from typing import TypedDict

from workers.request import PreflightPolicy

__all__ = ["GatherOptions", "RaceOptions", "SpawnOptions"]


class _RunOptions(TypedDict, total=False):
    """Keyword options of every pattern (see ``Orchestrator.request``)."""

    deadline_s: float | None
    preflight: PreflightPolicy
    run_id: str | None
    max_tokens: int | None
    max_cost_usd: float | None


class SpawnOptions(_RunOptions, total=False):
    """Keyword options of ``spawn``: batching besides the common ones."""

    batch_size: int | None


class GatherOptions(SpawnOptions, total=False):
    """Keyword options of ``gather``: those of ``spawn`` plus the quorum."""

    quorum: int | None


class RaceOptions(_RunOptions, total=False):
    """Keyword options of ``race`` (races never batch)."""

    validate: str | None
