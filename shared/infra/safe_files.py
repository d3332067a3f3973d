"""Opening files whose names someone else controls (the drop folder, the shared volume).

A name checked by one call can be swapped for a symbolic link, a hard link to another file
or a FIFO before the next call uses it. So a file is opened once, without following a link
(``O_NOFOLLOW``) and without blocking on a FIFO (``O_NONBLOCK``), the handle is checked with
``fstat`` (a regular file, one link when asked), and everything after reads through that
handle, never through the name again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import BinaryIO

_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class UnsafeFile(Exception):
    """The name does not lead to a plain file of its own; the message says what it is."""


def _kind(mode: int) -> str:
    for check, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if check(mode):
            return kind
    return "not a regular file"


def open_regular(path: Path, single_link: bool = True) -> BinaryIO:
    """The file at ``path`` opened for reading, checked through its handle.

    Raises UnsafeFile for a symbolic link, anything but a regular file, and (when
    ``single_link``) a file with more than one hard link: another name elsewhere could be
    a file the service must never read. FileNotFoundError passes through."""
    try:
        fd = os.open(path, _FLAGS)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK):
            raise UnsafeFile("it is a symbolic link") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"it is {_kind(st.st_mode)}, not a regular file")
        if single_link and st.st_nlink != 1:
            raise UnsafeFile(f"it has {st.st_nlink} hard links; only a file of its own is taken")
        # Regular files never block; clear the flag so reads behave as usual.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
