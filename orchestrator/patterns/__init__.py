"""Pattern builders: one module per pattern, each turning a request into a Celery canvas."""

from orchestrator.patterns.common import Expansion, agent_signature, member_signatures
from orchestrator.patterns.gather import build_gather
from orchestrator.patterns.race import build_race
from orchestrator.patterns.sequential import build_sequential
from orchestrator.patterns.spawn import build_spawn

__all__ = [
    "Expansion",
    "agent_signature",
    "build_gather",
    "build_race",
    "build_sequential",
    "build_spawn",
    "member_signatures",
]
