"""Network namespaces as small "machines" on one host, for multi-host tests (needs root).

Layout: a "switch" namespace holds a bridge; every machine is a namespace joined to the bridge
by a veth pair and has one address in a private /24; one more veth end in the root namespace
(address ``.1``) lets the test process itself reach the machines. No namespace has a default
route, so packets can only travel between these namespaces. Every namespace and link name starts
with ``orcht``; ``Network.close()`` removes them, and ``Network.start()`` first removes any left
behind by a run that died. A lock file keeps two test sessions from sharing the names.

    with Network() as net:
        redis_host = net.add("redis")
        subprocess.run([*redis_host.exec_prefix(), "valkey-server", ...])
        redis_host.set_link(up=False)       # the machine is cut off
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PREFIX = "orcht"
SUBNET = "10.213.7"  # .1 is the root namespace's end, machines get .2 onwards
SWITCH = f"{PREFIX}-sw"
BRIDGE = f"{PREFIX}-br"
HOST_LINK = f"{PREFIX}-h"
LOCK_PATH = Path("/run/lock/orcht.lock") if Path("/run/lock").is_dir() else Path("/tmp/orcht.lock")


class NetnsError(RuntimeError):
    """An ``ip`` command failed while building or removing the network."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def missing_requirement() -> str | None:
    """Why namespaces cannot be used here, judged without side effects (None: maybe they can)."""
    if os.geteuid() != 0:
        return f"network namespaces need root (running as uid {os.geteuid()})"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    return None


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here (None when they can): also tries to make one."""
    reason = missing_requirement()
    if reason:
        return reason
    probe = f"{PREFIX}-probe{os.getpid() % 100000}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"'ip netns add' does not work here: {made.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None


def namespaces(prefix: str = PREFIX) -> list[str]:
    """Namespaces whose name starts with ``prefix``."""
    out = _ip("netns", "list", check=False).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    return [n for n in names if n.startswith(prefix)]


def _kill_namespace_processes(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


def cleanup(prefix: str = PREFIX) -> list[str]:
    """Remove every ``prefix*`` namespace (killing what still runs in it) and root-side link.

    Returns what was removed. Call it only while holding the lock (``Network`` does).
    """
    removed = []
    for ns in namespaces(prefix):
        _kill_namespace_processes(ns)
        _ip("netns", "del", ns, check=False)
        removed.append(ns)
    links = _ip("-o", "link", "show", check=False).stdout
    for line in links.splitlines():
        parts = line.split(":")
        if len(parts) < 2:
            continue
        name = parts[1].strip().split("@", 1)[0]
        if name.startswith(prefix):
            _ip("link", "del", name, check=False)  # deleting one veth end deletes its peer
            removed.append(name)
    return removed


@dataclass
class Machine:
    """One namespace with one address on the private subnet."""

    name: str
    ns: str
    address: str
    link: str

    def exec_prefix(self) -> list[str]:
        """Prefix that runs a command inside this machine (``ip netns exec`` execs it, so the
        process id is the command's own)."""
        return ["ip", "netns", "exec", self.ns]

    def set_link(self, *, up: bool) -> None:
        """Plug the machine's only cable in or pull it out."""
        _ip("-n", self.ns, "link", "set", "dev", self.link, "up" if up else "down")

    def link_is_up(self) -> bool:
        out = _ip("-n", self.ns, "-o", "link", "show", "dev", self.link).stdout
        return ",UP" in out or "<UP" in out


@dataclass
class Network:
    """A private /24 between namespaces; see the module docstring."""

    subnet: str = SUBNET
    prefix: str = PREFIX
    lock_timeout_s: float = 60.0
    machines: dict[str, Machine] = field(default_factory=dict)
    stale_removed: list[str] = field(default_factory=list)
    _lock: IO[str] | None = None

    @property
    def host_address(self) -> str:
        """The root namespace's address on the subnet (where the test process talks from)."""
        return f"{self.subnet}.1"

    def start(self) -> Network:
        """Take the lock, remove leftovers, build the switch and the root namespace's port."""
        self._acquire_lock()
        try:
            self.stale_removed = cleanup(self.prefix)
            _ip("netns", "add", SWITCH)
            _ip("-n", SWITCH, "link", "set", "lo", "up")
            _ip("-n", SWITCH, "link", "add", BRIDGE, "type", "bridge", "forward_delay", "0")
            _ip("-n", SWITCH, "link", "set", BRIDGE, "up")
            peer = f"{self.prefix}-s1"
            _ip("link", "add", HOST_LINK, "type", "veth", "peer", "name", peer, "netns", SWITCH)
            _ip("-n", SWITCH, "link", "set", peer, "master", BRIDGE, "up")
            ipv6 = Path(f"/proc/sys/net/ipv6/conf/{HOST_LINK}/disable_ipv6")
            with contextlib.suppress(OSError):
                ipv6.write_text("1")  # keep the root end quiet: IPv4 only
            _ip("addr", "add", f"{self.host_address}/24", "dev", HOST_LINK)
            _ip("link", "set", HOST_LINK, "up")
        except BaseException:
            self.close()
            raise
        return self

    def add(self, name: str) -> Machine:
        """A new machine ``<prefix>-<name>`` with the next free address."""
        index = len(self.machines) + 2
        ns = f"{self.prefix}-{name}"
        if len(ns) > 15 or name in self.machines:
            raise ValueError(f"machine name {name!r} is taken or too long")
        link, peer = f"{self.prefix}-m{index}", f"{self.prefix}-s{index}"
        machine = Machine(name=name, ns=ns, address=f"{self.subnet}.{index}", link=link)
        _ip("netns", "add", ns)
        self.machines[name] = machine
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("link", "add", link, "netns", ns, "type", "veth", "peer", "name", peer, "netns", SWITCH)
        _ip("-n", SWITCH, "link", "set", peer, "master", BRIDGE, "up")
        _ip("-n", ns, "addr", "add", f"{machine.address}/24", "dev", link)
        _ip("-n", ns, "link", "set", link, "up")
        return machine

    def close(self) -> None:
        """Kill what runs in the machines, remove every namespace and link, release the lock."""
        try:
            cleanup(self.prefix)
            self.machines.clear()
        finally:
            if self._lock is not None:
                self._lock.close()  # closing releases the flock
                self._lock = None

    def _acquire_lock(self) -> None:
        lock = LOCK_PATH.open("a")
        deadline = time.monotonic() + self.lock_timeout_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock = lock
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    lock.close()
                    raise NetnsError(
                        f"another test session holds {LOCK_PATH} (the {self.prefix}* network) "
                        f"for more than {self.lock_timeout_s}s"
                    ) from None
                time.sleep(0.1)

    def __enter__(self) -> Network:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
