"""Test hosts made of Linux network namespaces, joined by one virtual switch.

Every host is a network namespace with one interface (``eth0``) and its own address; the
other end of its cable (a veth pair) is a port of a bridge that lives in a namespace of its
own, the switch. Nothing is created in the namespace the tests run in and no host has a
route anywhere but the private /24 of the switch, so traffic can only ever go between the
hosts made here. Namespace names carry the creating process id and a random tag: a run
killed half-way leaves names the next run recognises (its process is gone) and removes.

Faults are made where they happen on real networks: a host's switch port goes down (its
processes are not told; packets vanish), two hosts lose each other (each addresses the other
to a MAC address nobody has, so packets vanish both ways while every other path works),
every process of a host is SIGKILLed at once.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "promo-cl-"
NETNS_DIR = Path("/run/netns")
SUBNET = "10.213.0"  # exists only on the switch made here; every run has its own switch
NOWHERE_MAC = "02:00:00:00:00:01"  # locally administered, never given to an interface here
CLONE_NEWNET = 0x40000000
CLONE_NEWUTS = 0x04000000

_libc = ctypes.CDLL(None, use_errno=True)


class NetnsUnavailable(RuntimeError):
    """This machine (or user) cannot create network namespaces."""


def ip(*args: str) -> str:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def _check(rc: int, what: str) -> None:
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def set_thread_netns(path: Path | str) -> None:
    """Move the calling thread (only it) into a network namespace: sockets it creates from
    now on, and threads it starts, live there."""
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, CLONE_NEWNET), f"setns {path}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def thread_in_netns(name: str) -> Iterator[None]:
    """The calling thread works from host ``name`` until the block ends."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        set_thread_netns(NETNS_DIR / name)
        try:
            yield
        finally:
            _check(_libc.setns(home, CLONE_NEWNET), "setns back")
    finally:
        os.close(home)


def become_host(netns: str, hostname: str) -> None:
    """For a launcher about to exec a host's program: its network, its own host name."""
    set_thread_netns(NETNS_DIR / netns)
    _check(_libc.unshare(CLONE_NEWUTS), "unshare(CLONE_NEWUTS)")
    name = hostname.encode()
    _check(_libc.sethostname(name, len(name)), "sethostname")


def host_command(netns: str, hostname: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run as a process of the host (see ``tests.cluster.host_exec``)."""
    return [sys.executable, "-m", "tests.cluster.host_exec", netns, hostname, "--", *argv]


@dataclass
class Host:
    role: str  # short: also the switch port's name (p-<role>, at most 15 characters)
    netns: str
    ip: str

    @property
    def port(self) -> str:
        return f"p-{self.role}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def netns_pids(netns: str) -> list[int]:
    """Processes of the host (never this one, whose test thread may be visiting it)."""
    try:
        pids = [int(p) for p in ip("netns", "pids", netns).split()]
    except RuntimeError:
        return []
    return [pid for pid in pids if pid != os.getpid()]


def _kill_netns(netns: str) -> None:
    """SIGKILL every process of the namespace (by id), then remove its name."""
    for _ in range(50):
        pids = netns_pids(netns)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    with contextlib.suppress(RuntimeError):
        ip("netns", "del", netns)


def remove_leftovers() -> list[str]:
    """Namespaces of earlier runs whose process is gone (killed before its teardown)."""
    removed = []
    if not NETNS_DIR.is_dir():
        return removed
    for path in NETNS_DIR.iterdir():
        if not path.name.startswith(PREFIX):
            continue
        owner = path.name[len(PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _pid_alive(int(owner)):
            _kill_netns(path.name)
            removed.append(path.name)
    return removed


def probe() -> None:
    """Raise NetnsUnavailable with the reason when namespaces cannot be made here."""
    if not sys.platform.startswith("linux"):
        raise NetnsUnavailable("network namespaces need Linux")
    try:
        subprocess.run(["ip", "-V"], capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        raise NetnsUnavailable(
            f"`ip` from iproute2 is not usable ({exc}); `make system-deps` installs it"
        ) from exc
    name = f"{PREFIX}{os.getpid()}-probe{secrets.token_hex(2)}"
    try:
        ip("netns", "add", name)
    except RuntimeError as exc:
        raise NetnsUnavailable(
            f"cannot create a network namespace ({exc}); the cluster test needs root "
            "(CAP_SYS_ADMIN and CAP_NET_ADMIN)"
        ) from exc
    try:
        ip("-n", name, "link", "add", "br0", "type", "bridge")
        ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    except RuntimeError as exc:
        raise NetnsUnavailable(f"cannot create bridge or veth interfaces ({exc})") from exc
    finally:
        _kill_netns(name)


@dataclass
class VirtualNetwork:
    """The switch and the hosts plugged into it; ``destroy`` removes all of it."""

    tag: str = field(default_factory=lambda: f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}")
    hosts: dict[str, Host] = field(default_factory=dict)
    _made: list[str] = field(default_factory=list)
    _partitions: set[tuple[str, str]] = field(default_factory=set)

    @property
    def switch(self) -> str:
        return f"{self.tag}-switch"

    def add_host(self, role: str, last_octet: int) -> Host:
        host = Host(role, f"{self.tag}-{role}", f"{SUBNET}.{last_octet}")
        self.hosts[role] = host
        return host

    def create(self) -> None:
        ip("netns", "add", self.switch)
        self._made.append(self.switch)
        ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        ip("-n", self.switch, "link", "set", "br0", "up")
        for host in self.hosts.values():
            ip("netns", "add", host.netns)
            self._made.append(host.netns)
            ip("-n", host.netns, "link", "set", "lo", "up")
            ip(
                "-n",
                self.switch,
                "link",
                "add",
                host.port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                host.netns,
            )
            ip("-n", self.switch, "link", "set", host.port, "master", "br0", "up")
            ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            ip("-n", host.netns, "link", "set", "eth0", "up")

    def destroy(self) -> None:
        for netns in reversed(self._made):
            _kill_netns(netns)
        self._made.clear()

    # --- faults -------------------------------------------------------------------------

    def set_link(self, host: Host, up: bool) -> None:
        """The host's switch port goes down or comes back, as when its cable is pulled."""
        ip("-n", self.switch, "link", "set", host.port, "up" if up else "down")

    def partition(self, a: Host, b: Host) -> None:
        """``a`` and ``b`` stop hearing each other, both ways and silently; every other
        pair still talks (each addresses the other to a MAC address no host has)."""
        self._partitions.add((a.role, b.role))
        for src, dst in ((a, b), (b, a)):
            ip(
                "-n",
                src.netns,
                "neigh",
                "replace",
                dst.ip,
                "lladdr",
                NOWHERE_MAC,
                "dev",
                "eth0",
                "nud",
                "permanent",
            )

    def heal(self, a: Host, b: Host) -> None:
        self._partitions.discard((a.role, b.role))
        for src, dst in ((a, b), (b, a)):
            with contextlib.suppress(RuntimeError):
                ip("-n", src.netns, "neigh", "del", dst.ip, "dev", "eth0")

    def repair(self) -> None:
        """Every port up, every partition healed (what a failed test may have left)."""
        for host in self.hosts.values():
            self.set_link(host, up=True)
        for a, b in list(self._partitions):
            self.heal(self.hosts[a], self.hosts[b])

    def kill_host(self, host: Host) -> list[int]:
        """SIGKILL every process of the host at once, as when the machine loses power."""
        pids = netns_pids(host.netns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pids
