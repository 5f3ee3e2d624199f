"""The keyword options of ``spawn``, ``gather`` and ``race`` (typed, for editors and mypy)."""

from __future__ import annotations

from typing import TypedDict

from workers.request import HedgePercentile, PreflightPolicy

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
    """Keyword options of ``gather``: those of ``spawn`` plus the quorum (``early``: merge as
    soon as the quorum arrived, stop the rest)."""

    quorum: int | None
    early: bool


class RaceOptions(_RunOptions, total=False):
    """Keyword options of ``race`` (races never batch); ``hedge_after_s`` / ``hedge``: start
    racer i only i delays after the run, if no valid result arrived by then."""

    validate: str | None
    hedge_after_s: float | None
    hedge: HedgePercentile | None
