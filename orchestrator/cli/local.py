"""Commands that run processes here: the embedded stack (``demo``, ``up``) and the long-running
``worker``, ``coordinator`` and ``flower``."""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from orchestrator.api import Orchestrator
from orchestrator.cli.demo import run_demo
from orchestrator.cli.group import _say, _settings, main
from orchestrator.embedded import EmbeddedStack
from orchestrator.embedded.processes import run_coordinator, run_flower, run_worker
from workers.errors import OrchestratorError
from workers.settings import safe_url


def _stops_as_interrupt() -> None:
    """SIGTERM and SIGHUP (a closed terminal) stop the stack like Ctrl-C; a reader that went
    away (``up | tee`` stopped by Ctrl-C) must not stop the clean-up halfway."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # a write to a closed pipe raises instead


@contextmanager
def _embedded(
    workers: int,
    concurrency: int,
    flower: bool = False,
    *,
    own_server: bool = False,
    flower_port: int | None = None,
) -> Iterator[EmbeddedStack]:
    """The embedded stack; ``own_server``: always start our own server (``up``), whatever
    ORCH_BROKER_URL / ORCH_STATE_URL say."""
    _stops_as_interrupt()
    settings = _settings()
    if own_server and settings.broker_url:
        _say(
            f"ignoring ORCH_BROKER_URL={safe_url(settings.broker_url)} from the environment: "
            "`up` always starts its own server (unset it, or use `orchestrator worker` / "
            "`coordinator` against that broker)"
        )
    stack = EmbeddedStack(
        workers=workers,
        concurrency=concurrency,
        broker_url=None if own_server else settings.broker_url,
        key_prefix=settings.key_prefix,
        agent_modules=settings.agent_modules or ["workers.agents"],
    )
    # Every URL printed is masked: the embedded server's has its password in it.
    where = safe_url(stack.broker_url or "") or "an embedded valkey-server on 127.0.0.1"
    _say(f"starting coordinator and {workers} workers x{concurrency} against {where} ...")
    started = time.monotonic()
    try:
        stack.start()
        _say(
            f"ready in {time.monotonic() - started:.1f}s (broker {stack.safe_url}, "
            f"logs {stack.log_dir})"
        )
        if flower:
            stack.extra_env["ORCH_FLOWER__LOCAL_ONLY"] = "true"
            if flower_port is not None:
                stack.extra_env["ORCH_FLOWER__PORT"] = str(flower_port)
            stack.start_process("flower", ["flower"])
        yield stack
    finally:
        _say("stopping every process started ...")
        stack.stop()
        _say("stopped.")


@main.command()
@click.option("--workers", default=2, show_default=True, help="Worker processes.")
@click.option("--concurrency", default=2, show_default=True, help="Pool size of each worker.")
@click.option("--difficulty", default=5, show_default=True, help="Race difficulty (hex zeros).")
def demo(workers: int, concurrency: int, difficulty: int) -> None:
    """Start an embedded stack (unless ORCH_BROKER_URL is set), run the three patterns, stop."""
    try:
        with _embedded(workers, concurrency) as stack:
            orch = Orchestrator(broker_url=stack.url, key_prefix=stack.key_prefix)
            try:
                ok = run_demo(orch, click.echo, difficulty=difficulty)
            finally:
                orch.close()
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(0 if ok else 1)


@main.command()
@click.option("--workers", default=2, show_default=True)
@click.option("--concurrency", default=2, show_default=True)
@click.option("--flower/--no-flower", default=True, show_default=True)
@click.option(
    "--flower-port", type=int, default=None, help="Flower's port (default ORCH_FLOWER__PORT)."
)
def up(workers: int, concurrency: int, flower: bool, flower_port: int | None) -> None:
    """Run an embedded stack (its own server, coordinator, workers, Flower) until Ctrl-C,
    SIGTERM or SIGHUP; it always starts its own server, whatever ORCH_BROKER_URL says.
    Exits non-zero, naming the process and its log, if one of them exits."""
    failed: str | None = None
    try:
        port = flower_port or _settings().flower.port
        with _embedded(workers, concurrency, flower, own_server=True, flower_port=port) as stack:
            env_file = stack.write_client_env()
            _say(
                f". {env_file}   # for clients: sets ORCH_BROKER_URL={stack.safe_url} "
                "(the file holds the password; only you can read it)"
            )
            if flower:
                _say(f"Flower: http://127.0.0.1:{port} (local only)")
            failed = _watch_processes(stack)
    except KeyboardInterrupt:
        return
    if failed is not None:
        raise click.ClickException(failed)


def _watch_processes(stack: EmbeddedStack) -> str:
    """Block until a process of the stack exits; say which, with its code and log."""
    while True:
        for name, proc in stack.procs.items():
            code = proc.poll()
            if code is not None:
                assert stack.log_dir is not None
                return (
                    f"{name} exited with code {code}; its log: {stack.log_dir / f'{name}.log'}"
                    f"\n{stack.tail(name, 15)}"
                )
        time.sleep(0.5)  # nothing to block on: the processes are not ours to wait on


@main.command()
@click.option("--concurrency", "-c", default=2, show_default=True)
@click.option(
    "--pool",
    "-P",
    type=click.Choice(["prefork", "threads", "solo"]),
    default="prefork",
    show_default=True,
)
@click.option("--queues", "-Q", default=None, help="Comma-separated queues (default: all agents').")
@click.option("--hostname", "-n", default="worker@%h", show_default=True)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
@click.argument("celery_options", nargs=-1, type=click.UNPROCESSED)
def worker(
    concurrency: int,
    pool: str,
    queues: str | None,
    hostname: str,
    loglevel: str,
    celery_options: tuple[str, ...],
) -> None:
    """Run a worker for the agents in ORCH_AGENT_MODULES.

    Celery worker options follow ``--``: ``orchestrator worker -c 4 -- --autoscale=8,2
    --max-tasks-per-child=100``. The gevent and eventlet pools are refused (a subagent could
    not be cancelled alone).
    """
    try:
        run_worker(
            _settings(),
            concurrency=concurrency,
            pool=pool,
            queues=queues.split(",") if queues else None,
            hostname=hostname,
            loglevel=loglevel,
            celery_options=list(celery_options),
        )
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--concurrency", "-c", default=4, show_default=True)
@click.option("--hostname", "-n", default="coordinator@%h", show_default=True)
@click.option("--loglevel", "-l", default="INFO", show_default=True)
def coordinator(concurrency: int, hostname: str, loglevel: str) -> None:
    """Run the coordinator (validates and expands orchestrations)."""
    try:
        run_coordinator(_settings(), concurrency=concurrency, hostname=hostname, loglevel=loglevel)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc


@main.command()
@click.option("--port", default=None, type=int)
@click.option("--address", default=None)
def flower(port: int | None, address: str | None) -> None:
    """Run Flower with basic auth from settings."""
    try:
        run_flower(_settings(), port=port, address=address)
    except OrchestratorError as exc:
        raise click.ClickException(str(exc)) from exc
