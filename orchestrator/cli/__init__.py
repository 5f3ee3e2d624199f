"""The command line (``orchestrator ...``) and its renderers: the live progress view, the ROI
report and timeline, and the demo."""

from orchestrator.cli.commands import main

__all__ = ["main"]
