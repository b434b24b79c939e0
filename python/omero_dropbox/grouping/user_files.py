"""The one way the grouper reads a file of a user's tree: no symlink followed, never
blocking on a FIFO, regular files only, bounded reads."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from typing import Any

from omero_dropbox.grouping.limits import DEFAULT_LIMITS, GroupingLimits, over_size
from omero_dropbox.journal import display_path


class NotRegularFileError(OSError):
    """A user's file that is a FIFO, socket, device, directory or symbolic link."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{display_path(path)} is not a regular file ({kind})")
        self.kind = kind


_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symbolic link"),
)


def file_kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


class UserFile:
    """An open regular file of a user's tree; reads are positional and bounded."""

    def __init__(self, fd: int, st: os.stat_result) -> None:
        self.fd = fd
        self.st = st

    def pread(self, size: int, offset: int) -> bytes:
        chunks: list[bytes] = []
        while size > 0:
            chunk = os.pread(self.fd, min(size, 1 << 20), offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return b"".join(chunks)


def with_user_file(path: str, use: Callable[[UserFile], Any]) -> Any:
    """The one way this module reads a file of a user's tree.

    lstat first, so a FIFO, device or socket is never even opened; then open without
    following a symlink and without blocking (a FIFO swapped in meanwhile), and refuse
    anything fstat does not call a regular file.
    """
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegularFileError(path, file_kind(st.st_mode))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, file_kind(st.st_mode))
        return use(UserFile(fd, st))
    finally:
        os.close(fd)


def read_head(path: str, size: int) -> bytes:
    data: bytes = with_user_file(path, lambda f: f.pread(size, 0))
    return data


def read_small(path: str, limits: GroupingLimits = DEFAULT_LIMITS) -> bytes:
    cap = limits.max_key_file_bytes

    def read(f: UserFile) -> bytes:
        if f.st.st_size > cap:
            raise over_size(f.st.st_size, cap)
        data = f.pread(cap + 1, 0)
        if len(data) > cap:
            raise over_size(len(data), cap)
        return data

    data: bytes = with_user_file(path, read)
    return data
