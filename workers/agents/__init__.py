"""Built-in agents that do real work, for the demo and the benchmarks.

Importing this package registers every agent, merger and validator below, so a worker started
with ``ORCH_AGENT_MODULES=workers.agents`` serves them all:

- ``text``: ``module_stats`` and ``module_findings`` (agents over ``ModuleRef``), the merger
  ``merge_findings`` (``Finding`` -> ``Report``) and the validator ``has_facts``; they analyse the
  Python standard library's own source files, so they need no network or data download.
- ``search``: ``pow_solver`` and ``pow_guess`` (agents over ``PowProblem``) and the validator
  ``pow_valid``; a sha256 proof-of-work search, slow to solve and instant to check, for races.
"""

# The submodules register their agents as a side effect of being imported.
from workers.agents import search, text
from workers.agents.search import PowProblem, PowSolution
from workers.agents.text import Finding, ModuleRef, ModuleStats, Report

__all__ = [
    "Finding",
    "ModuleRef",
    "ModuleStats",
    "PowProblem",
    "PowSolution",
    "Report",
    "search",
    "text",
]
