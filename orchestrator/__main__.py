"""``python -m orchestrator`` is the ``orchestrator`` CLI."""

from orchestrator.cli import main

main()
