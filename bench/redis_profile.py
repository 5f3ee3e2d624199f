"""Redis commands per subagent: INFO commandstats deltas (idle traffic subtracted) and, on the
embedded server, a MONITOR trace that tells round trips from commands run inside Lua scripts and
attributes each command to the process that sent it (client, coordinator, worker, pool child)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import redis

from bench.common import Target

IDLE_WINDOW_S = 1.0


@dataclass
class CommandCount:
    """Commands executed for one measured operation."""

    n: int
    by_command: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> float:
        return sum(self.by_command.values())

    def per_subagent(self) -> float:
        return self.total / self.n if self.n else 0.0


def idle_rate(target: Target, window_s: float = IDLE_WINDOW_S) -> dict[str, float]:
    """Background commands per second (polls, heartbeats, events) while nothing runs."""
    before = target.commandstats()
    time.sleep(window_s)
    after = target.commandstats()
    return {k: (after.get(k, 0) - before.get(k, 0)) / window_s for k in after}


def count_commands(
    target: Target, n: int, op: Callable[[], object], idle: dict[str, float]
) -> CommandCount:
    """Commands the server executed during ``op`` minus the idle background (INFO itself too)."""
    before = target.commandstats()
    started = time.monotonic()
    op()
    elapsed = time.monotonic() - started
    after = target.commandstats()
    counts: Counter[str] = Counter()
    for cmd in set(after) | set(before):
        delta = after.get(cmd, 0) - before.get(cmd, 0) - idle.get(cmd, 0.0) * elapsed
        if cmd == "info":
            delta -= 1
        if delta >= 0.5:
            counts[cmd] = round(delta)
    return CommandCount(n=n, by_command=counts)


# -- MONITOR trace ---------------------------------------------------------------------------------


@dataclass
class Trace:
    """Commands seen by MONITOR: (role, command, from_lua)."""

    n: int
    seen: Counter[tuple[str, str, bool]] = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)

    def per_subagent(self, *, lua: bool | None = None, role: str | None = None) -> float:
        total = sum(
            c
            for (r, _, in_lua), c in self.seen.items()
            if (lua is None or in_lua == lua) and (role is None or r == role)
        )
        return total / self.n if self.n else 0.0

    def roles(self) -> list[str]:
        return sorted({r for r, _, _ in self.seen})

    def top(self, role: str, limit: int = 8) -> list[tuple[str, float]]:
        per: Counter[str] = Counter()
        for (r, cmd, in_lua), c in self.seen.items():
            if r == role and not in_lua:
                per[cmd] += c
        return [(cmd, c / self.n) for cmd, c in per.most_common(limit)]


def _roles_by_pid(target: Target) -> dict[int, str]:
    import psutil

    roles = {os.getpid(): "client"}
    for name, proc in target.stack.procs.items():
        role = "coordinator" if name == "coordinator" else "worker"
        try:
            p = psutil.Process(proc.pid)
            roles[p.pid] = role
            for child in p.children(recursive=True):
                roles[child.pid] = f"{role} pool" if role == "worker" else role
        except psutil.NoSuchProcess:
            continue
    return roles


def _port_roles(target: Target, server_port: int) -> dict[int, str]:
    import psutil

    roles = _roles_by_pid(target)
    out: dict[int, str] = {}
    for conn in psutil.net_connections(kind="tcp"):
        if conn.raddr and conn.raddr.port == server_port and conn.pid is not None:
            out[conn.laddr.port] = roles.get(conn.pid, "other")
    return out


@contextlib.contextmanager
def monitor(target: Target, n: int) -> Iterator[Trace]:
    """Trace every command the server runs inside the block (embedded server only)."""
    trace = Trace(n=n)
    url = target.stack.url
    server_port = int(url.rsplit(":", 1)[1].split("/")[0])
    conn = redis.Redis.from_url(url)
    marker = f"bench-monitor-stop-{os.getpid()}-{time.monotonic_ns()}"
    raw: list[dict[str, Any]] = []
    ready = threading.Event()
    failed: list[BaseException] = []

    def listen() -> None:
        try:
            with conn.monitor() as m:  # type: ignore[no-untyped-call]
                ready.set()
                for item in m.listen():
                    if marker in item.get("command", ""):
                        return
                    raw.append(item)
        except BaseException as exc:  # surfaced to the caller below
            failed.append(exc)
            ready.set()

    thread = threading.Thread(target=listen, name="bench-monitor", daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.05)  # MONITOR is registered once its OK has been read
    ports = _port_roles(target, server_port)
    try:
        yield trace
    finally:
        ports.update(_port_roles(target, server_port))
        target.redis.echo(marker)
        thread.join(10)
        conn.close()
    if failed:
        raise failed[0]
    for item in raw:
        command = item.get("command", "").split(" ", 1)[0].upper()
        in_lua = item.get("client_type") == "lua"
        port = int(item.get("client_port") or 0)
        role = "(lua)" if in_lua else ports.get(port, "other")
        trace.seen[(role, command, in_lua)] += 1
        text = item.get("command", "")
        trace.lines.append(
            f"{float(item.get('time', 0)):.6f} {role:>12}{':' + str(port) if port else ''} "
            f"{text[:160]}"
        )


def main() -> None:
    """Print every command of one no-op subagent, ours then raw."""
    from celery import group

    from bench.common import new_tag, start_target
    from orchestrator import Task

    t = start_target("trace", url=None, workers=1, concurrency=1)
    try:
        for label in ("ours", "raw"):
            with monitor(t, 1) as trace:
                if label == "ours":
                    t.orch.spawn([Task("bench_noop", {"i": 0})], preflight="off").wait(30)
                else:
                    tag = new_tag()
                    with t.raw.results(tag) as stream:
                        group([t.raw.sig("bench.raw_noop", 0, task_id=f"{tag}-0")]).apply_async()
                        stream.collect({f"{tag}-0"}, 30)
            print(f"== {label}: one no-op subagent, {len(trace.lines)} commands")
            print("\n".join(trace.lines))
    finally:
        t.close()


if __name__ == "__main__":
    main()
