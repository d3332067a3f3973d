"""Launcher: ``python -m tests.cluster.host_exec NETNS HOSTNAME -- COMMAND...`` runs COMMAND
as a process of one test host - in its network namespace, under its host name - as if on a
machine of its own (two hosts never share ``socket.gethostname()``, as containers don't)."""

from __future__ import annotations

import os
import sys

from tests.cluster.netns import become_host


def main(argv: list[str]) -> None:
    if len(argv) < 4 or argv[2] != "--":
        sys.exit("usage: host_exec NETNS HOSTNAME -- COMMAND...")
    netns, hostname, command = argv[0], argv[1], argv[3:]
    become_host(netns, hostname)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
