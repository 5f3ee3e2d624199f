"""Flower with the run pages: Flower's own command, building our subclass of its application.

Flower's command parses its options, builds its application and listens in one function, with
no hook in between; it looks the application class up in its module when it runs, so handing it
our subclass there is how the pages get in before the first request, with every option, the
auth and the banner Flower's command gives.
"""

from __future__ import annotations

from typing import Any

import flower.command
from flower.app import Flower

from orchestrator.api.client import Orchestrator
from orchestrator.flower.handlers import install
from workers.settings import Settings


def flower_with_orchestrations(settings: Settings) -> type[Any]:
    """Flower's application class with the run pages, read through a client of ``settings``."""

    class OrchestrationsFlower(Flower):  # type: ignore[misc]
        """Flower, plus ``/orchestrations`` and ``/api/orchestrations``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            install(self, Orchestrator(settings))

    return OrchestrationsFlower


def use_orchestrations_flower(settings: Settings) -> None:
    """Make ``celery flower`` (run next in this process) build Flower with the run pages."""
    flower.command.Flower = flower_with_orchestrations(settings)
