"""The API a caller holds: the client (:class:`Orchestrator`), run handles (:class:`Run`) and
asyncio waiting."""

from orchestrator.api.client import Orchestrator
from orchestrator.api.host import RunHost
from orchestrator.api.runs import Run

__all__ = ["Orchestrator", "Run", "RunHost"]
