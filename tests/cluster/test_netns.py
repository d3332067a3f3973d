"""The test hosts themselves: reachable only from each other, faults that hit what they
say, and nothing left behind by a run that was killed."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from tests.cluster import netns
from tests.cluster.cluster import wait_until
from tests.cluster.netns import VirtualNetwork, host_command, ip, netns_pids, thread_in_netns


@pytest.fixture(scope="module")
def net(netns_available: None) -> Iterator[VirtualNetwork]:
    root_links = ip("-o", "link", "show")
    n = VirtualNetwork()
    for role, octet in (("a", 1), ("b", 2), ("c", 3)):
        n.add_host(role, octet)
    try:
        n.create()
        assert ip("-o", "link", "show") == root_links  # nothing made where the tests run
        yield n
    finally:
        n.destroy()


def _echo_server(n: VirtualNetwork, role: str) -> subprocess.Popen[bytes]:
    host = n.hosts[role]
    code = (
        "import socket\n"
        f"s = socket.create_server(('{host.ip}', 7000))\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(socket.gethostname().encode()); c.close()\n"
    )
    proc = subprocess.Popen(host_command(host.netns, f"h-{role}", [sys.executable, "-c", code]))
    with thread_in_netns(n.hosts["a"].netns):
        for _ in range(100):
            try:
                socket.create_connection((host.ip, 7000), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
    return proc


def _reach(n: VirtualNetwork, src: str, dst: str, timeout: float = 0.5) -> str | None:
    """The name the destination host answers with, or None if it cannot be reached."""
    with thread_in_netns(n.hosts[src].netns):
        try:
            with socket.create_connection((n.hosts[dst].ip, 7000), timeout=timeout) as s:
                return s.recv(100).decode()
        except OSError:
            return None


def test_hosts_have_only_the_switch_and_their_own_names(net: VirtualNetwork) -> None:
    for host in net.hosts.values():  # no route but the switch's own /24 (and link-local)
        v4 = ip("-n", host.netns, "-4", "route", "show").splitlines()
        assert [r.split()[:3] for r in v4] == [["10.213.0.0/24", "dev", "eth0"]], v4
        v6 = ip("-n", host.netns, "-6", "route", "show").splitlines()
        assert all(r.startswith("fe80::/64 ") for r in v6), v6
    server = _echo_server(net, "b")
    try:
        assert _reach(net, "a", "b") == "h-b"  # its own host name, not the machine's
        assert socket.gethostname() != "h-b"
    finally:
        server.kill()
        server.wait()


def test_link_down_silences_one_host_and_partition_one_pair(net: VirtualNetwork) -> None:
    servers = [_echo_server(net, role) for role in ("b", "c")]
    a, b = net.hosts["a"], net.hosts["b"]
    try:
        net.set_link(b, up=False)
        assert _reach(net, "a", "b") is None and _reach(net, "a", "c") == "h-c"
        net.set_link(b, up=True)
        assert _reach(net, "a", "b", timeout=3) == "h-b"

        net.partition(a, b)
        assert _reach(net, "a", "b") is None and _reach(net, "b", "a") is None
        assert _reach(net, "a", "c") == "h-c" and _reach(net, "c", "b") == "h-b"
        net.heal(a, b)
        assert _reach(net, "a", "b", timeout=3) == "h-b"
    finally:
        for s in servers:
            s.kill()
            s.wait()


def test_kill_host_kills_every_process_of_the_host_only(net: VirtualNetwork) -> None:
    sleepers = [
        subprocess.Popen(host_command(net.hosts[r].netns, r, ["sleep", "60"])) for r in "bbc"
    ]
    try:
        on_b = sorted(p.pid for p in sleepers[:2])
        wait_until(lambda: sorted(netns_pids(net.hosts["b"].netns)) == on_b, 20)
        assert sorted(net.kill_host(net.hosts["b"])) == on_b
        assert [p.wait(5) for p in sleepers[:2]] == [-9, -9]
        assert sleepers[2].poll() is None
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


def test_leftovers_of_a_killed_run_are_removed_and_live_runs_kept(netns_available: None) -> None:
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    stale = f"{netns.PREFIX}{dead_pid.pid}-abcdef-w1"
    mine = f"{netns.PREFIX}{os.getpid()}-abcdef-w1"
    ip("netns", "add", stale)
    ip("netns", "add", mine)
    orphan = subprocess.Popen(host_command(stale, "orphan", ["sleep", "60"]))
    try:
        wait_until(lambda: netns_pids(stale) == [orphan.pid], 20)
        assert stale in netns.remove_leftovers()
        assert orphan.wait(5) == -9
        names = os.listdir(netns.NETNS_DIR)
        assert stale not in names and mine in names
    finally:
        orphan.kill()
        orphan.wait()
        for name in (stale, mine):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
