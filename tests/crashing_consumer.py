"""An agent module whose import makes the worker's consumer fail as it starts, the way a consumer
that met an unreadable message used to (tests/test_poison.py checks the exit code)."""

from __future__ import annotations

from typing import Any

from celery import bootsteps, current_app


class Crash(bootsteps.StartStopStep):  # type: ignore[misc]
    def start(self, c: Any) -> None:
        raise RuntimeError("this consumer fails on purpose")


# Imported by create_app right after it made the app, so the current app is the worker's.
current_app.steps["consumer"].add(Crash)
