"""Pre-flight: should this plan run in parallel? A pure judgement (:func:`advise`) over the
request, the catalog, measured statistics and live capacity, and the I/O that feeds it."""

from orchestrator.advisor.advisor import Preflight, advise, suggest_batch
from orchestrator.advisor.checks import Capacity, Check, CheckStatus, QueueCapacity
from orchestrator.advisor.costmodel import Estimate, estimate
from orchestrator.advisor.source import PreflightSource, apply_policy

__all__ = [
    "Capacity",
    "Check",
    "CheckStatus",
    "Estimate",
    "Preflight",
    "PreflightSource",
    "QueueCapacity",
    "advise",
    "apply_policy",
    "estimate",
    "suggest_batch",
]
