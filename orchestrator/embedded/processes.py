"""Starting the long-running processes: worker, coordinator, Flower."""

from __future__ import annotations

import os
import sys

import click
from celery import Celery

from orchestrator.service import register_coordinator
from workers.app import agent_queues, create_app
from workers.errors import ConfigError
from workers.pools import POOLS as OUR_POOLS
from workers.presence import presence_step
from workers.registry import REGISTRY
from workers.settings import Settings

_COMMON = ["--without-mingle", "--without-gossip", "-E"]
#: Pools our cancellation works with: prefork (a signal to the pool process's main thread, and
#: the grace-period kill), threads (an asynchronous exception), solo. gevent and eventlet run
#: every task on one thread as greenlets: neither the signal nor the exception can reach one
#: greenlet without hitting the others, so a race's loser could not be stopped.
POOLS = ("prefork", "threads", "solo")
#: Worker options ours set; passing them after ``--`` would contradict ours.
_OURS = ("-Q", "--queues", "-c", "--concurrency", "-n", "--hostname", "-l", "--loglevel")


def check_celery_options(options: list[str]) -> None:
    """ConfigError for Celery worker options we cannot honour (an unsupported pool) or that
    our own options already set."""
    for i, opt in enumerate(options):
        name, _, value = opt.partition("=")
        if name in ("-P", "--pool"):
            value = value or (options[i + 1] if i + 1 < len(options) else "")
            if value not in POOLS:
                raise ConfigError(
                    f"pool {value!r} is not supported: cancelling a subagent needs prefork, "
                    "threads or solo (gevent and eventlet run every task as a greenlet of one "
                    "thread, which our interrupt cannot reach alone); use --pool"
                )
        if name in _OURS:
            raise ConfigError(
                f"{name} is an option of `orchestrator worker` itself: pass it before --"
            )


def import_from_cwd() -> None:
    """Make the application's package in the current directory importable, as ``celery worker``
    and ``python -m orchestrator`` do: the ``orchestrator`` console script's ``sys.path`` starts
    with its own ``bin/``, not the directory it was started in.

    Unlike Celery's temporary ``cwd_in_path``, it stays: an agent that imports lazily, and the
    pool processes forked later, find the application's modules too.
    """
    try:
        cwd = os.getcwd()
    except FileNotFoundError:  # started in a directory removed since: nothing to add
        return
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def run_worker(
    settings: Settings,
    *,
    concurrency: int,
    pool: str,
    queues: list[str] | None,
    hostname: str,
    loglevel: str,
    celery_options: list[str] | None = None,
) -> None:
    """Run a Celery worker for the agents (blocks); ``celery_options`` go to ``celery worker``
    as they are (``--autoscale``, ``--max-tasks-per-child``, ...)."""
    import_from_cwd()
    extra = list(celery_options or [])
    check_celery_options([*extra, "-P", pool])
    app = create_app(settings)
    queues = queues or agent_queues(settings)
    if pool in OUR_POOLS:
        # Celery's -P is a fixed choice; its default, prefork, gives way to the app's
        # worker_pool: ours, with async agents on the event loop.
        app.conf.worker_pool = OUR_POOLS[pool]
        pool = "prefork"
    argv = [
        "worker",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-P",
        pool,
        "-n",
        hostname,
        "-l",
        loglevel,
        *_COMMON,
        *extra,
    ]
    _run_celery(app, argv)


def run_coordinator(settings: Settings, *, concurrency: int, hostname: str, loglevel: str) -> None:
    """Run the coordinator: a threads-pool worker on the coordinator queue (blocks)."""
    import_from_cwd()
    app = create_app(settings, load_agents=False)
    register_coordinator(app, settings)
    app.steps["worker"].add(presence_step(settings, REGISTRY, "coordinator"))
    argv = [
        "worker",
        "-Q",
        settings.coordinator_queue,
        "-c",
        str(concurrency),
        "-P",
        "threads",
        "-n",
        hostname,
        "-l",
        loglevel,
        *_COMMON,
    ]
    _run_celery(app, argv)


def flower_argv(settings: Settings, *, port: int | None, address: str | None) -> list[str]:
    """Arguments for Flower; refuses to run without auth unless local-only on loopback."""
    fl = settings.flower
    address = address or fl.address
    argv = ["flower", f"--port={port or fl.port}", f"--address={address}"]
    if fl.basic_auth:
        if ":" not in fl.basic_auth:
            raise ConfigError("ORCH_FLOWER__BASIC_AUTH must be 'user:password'")
        argv.append(f"--basic-auth={fl.basic_auth}")
    elif not fl.local_only:
        raise ConfigError(
            "Flower needs credentials: set ORCH_FLOWER__BASIC_AUTH=user:password, or "
            "ORCH_FLOWER__LOCAL_ONLY=true to serve it without auth on 127.0.0.1 only"
        )
    elif address not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigError(f"local-only Flower must bind to loopback, not {address!r}")
    return argv


def run_flower(settings: Settings, *, port: int | None, address: str | None) -> None:
    """Run Flower against the configured broker, with the run pages (blocks)."""
    argv = flower_argv(settings, port=port, address=address)
    # Imported here, not at start-up: tornado and Flower are for this command only.
    from orchestrator.flower import use_orchestrations_flower

    use_orchestrations_flower(settings)
    app = create_app(settings, load_agents=False)
    sys.argv = ["celery", *argv]
    _run_celery(app, argv)


def _run_celery(app: Celery, argv: list[str]) -> None:
    """Run a celery command as ``app.start`` does, but exit with the code the command ends with.

    ``app.start`` (and ``app.worker_main``) run Celery's click group with standalone_mode off,
    in which click *returns* the exit code, and drop it: a worker whose consumer crashed (exit
    code 1) exited 0, and a supervisor that restarts on failure (systemd's
    ``Restart=on-failure``) left it down.
    """
    # Imported here, not at start-up: Celery's whole command line takes ~0.4 s to import.
    from celery.bin.celery import celery as celery_command

    celery_command.params[0].default = app  # how app.start hands the app to the command
    try:
        code = celery_command.main(args=argv, standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    finally:
        celery_command.params[0].default = None
    if code:
        sys.exit(code)
