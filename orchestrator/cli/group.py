"""The ``orchestrator`` command group and what its commands share: settings, a client, output
that survives a reader going away."""

from __future__ import annotations

import contextlib

import click
from pydantic import ValidationError

from orchestrator.api import Orchestrator
from workers.errors import OrchestratorError
from workers.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        # Never the values: a mistyped setting may hold a password.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)
        )
        raise click.ClickException(f"bad ORCH_* settings: {problems}") from exc
    except Exception as exc:
        raise click.ClickException(f"bad ORCH_* settings: {exc}") from exc


def _orch() -> Orchestrator:
    """A client for this command, closed when the command ends (exit codes included)."""
    try:
        orch = Orchestrator(_settings())
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(orch.close)
    return orch


def _say(text: str, *, err: bool = False) -> None:
    """Echo, unless nobody reads any more (the clean-up goes on regardless)."""
    with contextlib.suppress(OSError):
        click.echo(text, err=err)


@click.group()
@click.version_option(package_name="celery-orchestrator")
def main() -> None:
    """Multi-agent orchestration patterns on Celery + Redis."""
