"""The command line (``orchestrator ...``) and its renderers: the live progress view, the ROI
report and timeline, and the demo."""

from orchestrator.cli import commands, local  # noqa: F401 - importing them registers the commands
from orchestrator.cli.group import main

__all__ = ["main"]
