"""The pattern seam: every pattern is one :class:`PatternSpec`, registered here.

To add a pattern: give it a value in :class:`workers.models.Pattern`, write one module here
with its ``PatternSpec`` subclass, and add its instance to :data:`PATTERNS`.
"""

from workers.models import Pattern
from workers.patterns.base import Completion, Expansion, PatternSpec, Timing
from workers.patterns.gather import GATHER, merger_message, send_merger_message
from workers.patterns.members import LazySignatures, agent_signature, send_members
from workers.patterns.race import RACE
from workers.patterns.spawn import SPAWN

#: Every pattern, by its wire name.
PATTERNS: dict[Pattern, PatternSpec] = {p.pattern: p for p in (SPAWN, GATHER, RACE)}


def pattern_of(pattern: Pattern | str) -> PatternSpec:
    """The spec of a pattern (ValueError naming the known ones for an unknown name)."""
    return PATTERNS[Pattern(pattern)]


__all__ = [
    "PATTERNS",
    "Completion",
    "Expansion",
    "LazySignatures",
    "PatternSpec",
    "Timing",
    "agent_signature",
    "merger_message",
    "pattern_of",
    "send_members",
    "send_merger_message",
]
